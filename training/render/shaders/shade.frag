#version 330
// Skin texture (sRGB) or vertex albedo (linear), hemisphere ambient + wrapped Lambert key light
// + soft Blinn-Phong specular, in linear light; written back as sRGB. Also writes camera z.
uniform sampler2D skin;
uniform vec3 light_dir;      // camera space, towards the light
uniform vec3 light_color;
uniform vec3 sky_color;
uniform vec3 ground_color;
uniform vec3 up_dir;         // head +Y in camera space
uniform float wrap;
uniform float specular;
uniform float gloss;
in vec3 v_pos;
in vec3 v_normal;
in vec2 v_uv;
in vec3 v_albedo;
in vec2 v_mat;               // (skin texture weight, specular weight)
layout(location = 0) out vec4 out_color;
layout(location = 1) out float out_depth;
void main() {
    vec3 tex = pow(texture(skin, v_uv).rgb, vec3(2.2));
    vec3 albedo = mix(v_albedo, tex, v_mat.x);
    vec3 n = normalize(v_normal);
    vec3 view = normalize(-v_pos);
    if (dot(n, view) < 0.0) n = -n;  // inward-facing sockets and back faces: light the visible side
    float ndl = dot(n, light_dir);
    float diffuse = max((ndl + wrap) / (1.0 + wrap), 0.0);
    vec3 ambient = mix(ground_color, sky_color, 0.5 + 0.5 * dot(n, up_dir));
    vec3 h = normalize(light_dir + view);
    float fresnel = 0.04 + 0.96 * pow(1.0 - max(dot(h, view), 0.0), 5.0);
    float spec = specular * v_mat.y * pow(max(dot(n, h), 0.0), gloss) * (0.5 + 4.0 * fresnel) * step(0.0, ndl);
    vec3 c = albedo * (ambient + diffuse * light_color) + spec * light_color;
    out_color = vec4(pow(clamp(c, 0.0, 1.0), vec3(1.0 / 2.2)), 1.0);
    out_depth = v_pos.z;
}
