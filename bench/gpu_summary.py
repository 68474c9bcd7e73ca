"""The short table bench/gpu_check.py prints last (the device machine's reply keeps the end of the
output): speed per variant with the anchors beside, correctness figures, then every error and skip."""

from __future__ import annotations

from bench.gpu_tools import VARIANTS


def _ms(entry: dict | None) -> str:
    if not entry:
        return "-"
    if entry.get("status") != "ok":
        return entry.get("status", "-")
    ms = entry["median_ms"]
    return f"{ms / 1e3:.3f} s" if ms >= 1e4 else f"{ms:.2f}"


def _anchor(item: str, report: dict) -> str:
    anchors = report.get("anchors", {})
    if item.startswith("cfg_step_64x64"):
        return "; ".join(f"{k} {v} ms" for k, v in anchors.get("sd21_cfg_step_64x64_ms", {}).items())
    if item.startswith("image_512_50"):
        return "; ".join(f"{k} {v} s" for k, v in anchors.get("sd21_image_512_50_steps_s", {}).items())
    return ""


def speed_rows(report: dict) -> list[str]:
    rows = ["| item | eager ms | compile ms | compile+graphs ms | eager peak MiB | compile 1st call s | anchors |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for section, items in report["results"].items():
        for item, entry in items.items():
            if not (isinstance(entry, dict) and set(entry) & set(VARIANTS)):
                continue
            eager, comp = entry.get("eager") or {}, entry.get("compile") or {}
            rows.append(f"| {section} {item} | {_ms(eager)} | {_ms(comp)} | {_ms(entry.get('compile_cuda_graphs'))} "
                        f"| {eager.get('peak_allocated_mib', '-')} | {comp.get('first_call_s', '-')} "
                        f"| {_anchor(item, report)} |")
    return rows


def correctness_rows(report: dict) -> list[str]:
    rows, results = [], report["results"].get("correctness", {})
    tests = results.get("cuda_tests", {})
    if tests.get("status") == "ok":
        rows.append(f"- CUDA tests: {tests.get('passed')} passed, {tests.get('failures')} failed, "
                    f"{tests.get('errors')} errors, {tests.get('skipped')} skipped")
    image = results.get("cpu_vs_device_image", {})
    for dtype in ("float32", "float16", "bfloat16"):
        if dtype in image:
            d = image[dtype]
            rows.append(f"- CPU vs device image ({dtype} on the device): max pixel diff {d['max_pixel_diff']}, "
                        f"mean {d['mean_pixel_diff']}, latent rel. error {d['latent_rel_error']:.2e}")
    for name, entry in results.items():
        if name.endswith("_vs_fp32") and entry.get("status") == "ok":
            rows.append(f"- {name}: fp16 rel. error {entry['float16_rel_error']:.2e} (finite {entry['float16_finite']}), "
                        f"bf16 {entry['bfloat16_rel_error']:.2e} (finite {entry['bfloat16_finite']})")
    return rows


def problems(node, keys=()) -> list[str]:
    if not isinstance(node, dict):
        return []
    if node.get("status") in ("error", "skipped"):
        return [f"- {'/'.join(keys)}: {node['status']}: {node.get('error') or node.get('reason')}"]
    if node.get("status") == "ok" and node.get("warnings"):
        return [f"- {'/'.join(keys)}: warning: {w}" for w in node["warnings"]]
    return [line for k, v in node.items() for line in problems(v, (*keys, k))]


def summary(report: dict) -> str:
    meta = report["meta"]
    head = (f"\n## gpu_check: {meta.get('gpu', meta['device'])}, plan {meta['plan']}, torch {meta['torch']}, "
            f"compile backend {meta.get('compile_backend')}, {meta.get('elapsed_s')} s")
    lines = [head, "", *speed_rows(report), "", *correctness_rows(report)]
    issues = problems(report["results"])
    if issues:
        lines += ["", "errors, skips and warnings:", *issues]
    return "\n".join(lines)
