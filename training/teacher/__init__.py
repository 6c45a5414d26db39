"""2D landmark teachers for pseudo-labels (plug-ins: see :class:`LandmarkTeacher`)."""

from training.teacher.base import LandmarkTeacher, TeacherResult
from training.teacher.tddfa import Teacher

__all__ = ["LandmarkTeacher", "TeacherResult", "Teacher"]
