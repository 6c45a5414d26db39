#version 330
// Skin texture (sRGB) or vertex albedo (linear), blended with a strand hair map; lit in linear light
// by a hemisphere ambient and a key light with a skin-like response: wrapped Lambert whose red channel
// wraps further (light scattered under the skin reddens the terminator), a two-lobe specular with a
// Schlick fresnel (soft sheen, brighter at grazing angles) and a broad sheen on hair. Ambient
// occlusion (precomputed per vertex) darkens creases; alpha fades the neck's cut edge.
// Writes premultiplied sRGB colour + alpha, and camera z.
uniform sampler2D skin;
uniform sampler2D hair;
uniform vec3 light_dir;      // camera space, towards the light
uniform vec3 light_color;
uniform vec3 sky_color;
uniform vec3 ground_color;
uniform vec3 up_dir;         // head +Y in camera space
uniform float wrap;
uniform float specular;
uniform float gloss;
uniform float subsurface;
uniform float hair_sheen;
in vec3 v_pos;
in vec3 v_normal;
in vec2 v_uv;
in vec3 v_albedo;
in vec4 v_mat;               // (skin texture weight, specular weight, ambient occlusion, alpha)
in vec3 v_hair;              // (hair map u, v, hair weight)
layout(location = 0) out vec4 out_color;
layout(location = 1) out float out_depth;
void main() {
    vec3 albedo = v_albedo;
    if (v_mat.x > 0.0) albedo = mix(albedo, pow(texture(skin, v_uv).rgb, vec3(2.2)), v_mat.x);
    float hair_w = v_hair.z;
    float strand = 1.0;
    if (hair_w > 0.0) {
        vec4 h = texture(hair, v_hair.xy);   // rgb: hair colour, a: strand coverage
        float cover = clamp(hair_w * (0.6 + 0.8 * h.a), 0.0, 1.0);
        albedo = mix(albedo, pow(h.rgb, vec3(2.2)), cover);
        hair_w = cover;
        strand = h.a;
    }
    vec3 n = normalize(v_normal);
    vec3 view = normalize(-v_pos);
    if (dot(n, view) < 0.0) n = -n;  // inward-facing sockets and back faces: light the visible side
    float ndl = dot(n, light_dir);
    float skin_w = 1.0 - hair_w;
    vec3 w = wrap * (1.0 + skin_w * subsurface * vec3(0.9, 0.15, 0.0));
    vec3 diffuse = max((vec3(ndl) + w) / (1.0 + w), 0.0);
    diffuse = diffuse * diffuse * (3.0 - 2.0 * diffuse) * 0.35 + diffuse * 0.65;  // softer falloff
    float ao = v_mat.z;
    vec3 ambient = mix(ground_color, sky_color, 0.5 + 0.5 * dot(n, up_dir)) * ao;
    diffuse *= mix(1.0, ao, 0.6);
    vec3 h = normalize(light_dir + view);
    float ndh = max(dot(n, h), 0.0);
    float ndv = max(dot(n, view), 0.0);
    float fresnel = 0.028 + 0.972 * pow(1.0 - ndv, 5.0);
    float lobes = 0.7 * pow(ndh, gloss) + 0.3 * pow(ndh, gloss * 0.25);
    float lit = smoothstep(0.0, 0.15, ndl);
    float spec = specular * v_mat.y * skin_w * lobes * (0.6 + 5.0 * fresnel) * lit;
    // Hair: a broad highlight broken up by the strands (no tangents: an isotropic stand-in).
    spec += hair_sheen * hair_w * pow(ndh, 6.0) * (0.3 + 0.7 * strand) * lit;
    vec3 c = albedo * (ambient + diffuse * light_color) + spec * light_color * ao;
    float alpha = v_mat.w;
    out_color = vec4(pow(clamp(c, 0.0, 1.0), vec3(1.0 / 2.2)) * alpha, alpha);
    out_depth = v_pos.z;
}
