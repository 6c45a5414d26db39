#version 330
// OpenCV pinhole -> clip space. intr = (fx, fy, cx + 0.5, cy + 0.5) in render pixels: OpenCV puts
// pixel centres on integers, GL at +0.5. Window y grows with image v, so rows read back top-down.
uniform vec4 intr;
uniform vec2 size;
uniform vec2 near_far;
in vec3 in_pos;
in vec3 in_normal;
in vec2 in_uv;
in vec3 in_albedo;
in vec4 in_mat;
in vec3 in_hair;
out vec3 v_pos;
out vec3 v_normal;
out vec2 v_uv;
out vec3 v_albedo;
out vec4 v_mat;
out vec3 v_hair;
void main() {
    float z = in_pos.z;
    float n = near_far.x, f = near_far.y;
    gl_Position = vec4(2.0 * intr.x / size.x * in_pos.x + (2.0 * intr.z / size.x - 1.0) * z,
                       2.0 * intr.y / size.y * in_pos.y + (2.0 * intr.w / size.y - 1.0) * z,
                       (f + n) / (f - n) * z - 2.0 * f * n / (f - n),
                       z);
    v_pos = in_pos;
    v_normal = in_normal;
    v_uv = in_uv;
    v_albedo = in_albedo;
    v_mat = in_mat;
    v_hair = in_hair;
}
