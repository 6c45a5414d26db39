#version 330
// Draws the mesh in its UV layout (u, v in [0,1] -> the whole target); carries camera-space geometry.
in vec3 in_pos;
in vec3 in_normal;
in vec2 in_uv;
in float in_allow;   // first albedo channel: where photo colour may be taken (0..1)
out float v_allow;
out vec3 v_pos;
out vec3 v_normal;
void main() {
    gl_Position = vec4(in_uv * 2.0 - 1.0, 0.0, 1.0);
    v_pos = in_pos;
    v_normal = in_normal;
    v_allow = in_allow;
}
