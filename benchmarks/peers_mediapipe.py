"""MediaPipe Face Mesh on a clip, for benchmarks/bench_peers.py: run with the .venv-peers interpreter.

    .venv-peers/bin/python benchmarks/peers_mediapipe.py CLIP [MAX_FRAMES]

Decodes with PyAV (RGB, as the engine does) and runs ``FaceMesh(static_image_mode=False)``: BlazeFace on
the first frame and when tracking is lost, the 468-point mesh cropped from the previous frame in between
(MediaPipe's own tracking mode). Prints one JSON line: frames, frames with a face, seconds, fps (after
the graph is built, decode included).
"""

import json
import sys
import time

import av
import mediapipe as mp


def main() -> None:
    clip = sys.argv[1]
    max_frames = int(sys.argv[2]) if len(sys.argv) > 2 and int(sys.argv[2]) > 0 else None
    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=False,
                                           min_detection_confidence=0.5, min_tracking_confidence=0.5)
    container = av.open(clip)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    frames = faces = 0
    t0 = time.perf_counter()
    for vf in container.decode(stream):
        result = mesh.process(vf.to_ndarray(format="rgb24"))
        frames += 1
        faces += bool(result.multi_face_landmarks)
        if max_frames and frames >= max_frames:
            break
    seconds = time.perf_counter() - t0
    container.close()
    mesh.close()
    print(json.dumps({"frames": frames, "frames_with_face": faces, "seconds": seconds, "fps": frames / seconds}))


if __name__ == "__main__":
    main()
