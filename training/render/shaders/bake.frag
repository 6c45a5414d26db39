#version 330
// For each texel: project its surface point into the photo, sample it, and weight by how squarely
// the surface faces the camera; zero where the point is outside the photo or hidden (depth test
// against the fitted mesh's own depth map).
uniform sampler2D photo;
uniform sampler2D photo_depth;
uniform vec4 intr;           // fx, fy, cx + 0.5, cy + 0.5 (photo pixels)
uniform vec2 size;           // photo width, height
uniform vec2 facing_range;   // smoothstep edges on cos(angle to the camera)
uniform float depth_tolerance;
in vec3 v_pos;
in vec3 v_normal;
in float v_allow;
out vec4 out_color;
void main() {
    vec2 px = vec2(intr.x * v_pos.x / v_pos.z + intr.z, intr.y * v_pos.y / v_pos.z + intr.w);
    vec2 st = px / size;
    float inside = float(all(greaterThan(st, vec2(0.0))) && all(lessThan(st, vec2(1.0))));
    float facing = dot(normalize(v_normal), normalize(-v_pos));
    float w = smoothstep(facing_range.x, facing_range.y, facing) * inside * v_allow;
    float d = texture(photo_depth, st).r;
    w *= float(v_pos.z <= d + depth_tolerance);
    out_color = vec4(texture(photo, st).rgb * w, w);
}
