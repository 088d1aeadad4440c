"""Turning section results into the ratios of the issue, a printed table and the JSON document."""
from __future__ import annotations

import math

STAGE_ORDER = ("generate", "reference", "values", "reward", "advantages", "actor_update", "critic_update", "sync")


def _med(section: dict | None, key: str) -> float:
    if not section or "median" not in section:
        return math.nan
    return float(section["median"].get(key, math.nan))


def _ok(section: dict | None) -> bool:
    return bool(section) and "error" not in section


def _reliable(*sections) -> bool:
    return all(s.get("reliable", False) for s in sections if s)


def comparisons(results: dict) -> list[dict]:
    """One row per measurement of the issue: value, baseline, ratio, target, met, reliable."""
    rows = []
    ray, local, trl = results.get("ray_ppo"), results.get("local_ppo"), results.get("trl_ppo")
    hybrid = results.get("hybrid_ppo")
    gen, rm, mm = (results.get(k) for k in ("generation", "rm_ours", "matmul"))
    rm_trl = results.get("rm_trl_current") if _ok(results.get("rm_trl_current")) else results.get("rm_trl")

    def row(name, value, unit, baseline_name, baseline, target, higher_is_better, sections, note=""):
        ratio = value / baseline if baseline and not math.isnan(baseline) and not math.isnan(value) else math.nan
        met = None if math.isnan(ratio) or target is None else (ratio >= target if higher_is_better else ratio <= target)
        rows.append({"measurement": name, "value": value, "unit": unit, "baseline": baseline_name,
                     "baseline_value": baseline, "ratio": ratio, "target": target,
                     "target_is_min": higher_is_better, "met": met,
                     "reliable": _reliable(*sections) if all(_ok(s) for s in sections) else False, "note": note})

    if _ok(ray):
        tps = _med(ray, "tokens_per_s")
        if _ok(trl):
            row("1/2. PPO tokens/s, ours (Ray) vs TRL", tps, "tok/s", f"TRL {trl.get('trl_version', '')} PPOTrainer",
                _med(trl, "tokens_per_s"), 2.0, True, [ray, trl])
        if _ok(local):
            row("3. PPO s/iteration, Ray vs in-process", _med(ray, "seconds"), "s", "in-process (LocalWorkerGroup)",
                _med(local, "seconds"), 1.10, False, [ray, local], "ratio ≤ 1.10 = within 10 % (or faster)")
    if _ok(hybrid):  # issue 17: the roles in one process per rank, run in turn with all cores
        if _ok(trl):
            row("1/2b. PPO tokens/s, ours (Ray, hybrid layout) vs TRL", _med(hybrid, "tokens_per_s"), "tok/s",
                f"TRL {trl.get('trl_version', '')} PPOTrainer", _med(trl, "tokens_per_s"), 2.0, True, [hybrid, trl])
        if _ok(local):
            row("3b. PPO s/iteration, Ray hybrid layout vs in-process", _med(hybrid, "seconds"), "s",
                "in-process (LocalWorkerGroup)", _med(local, "seconds"), 1.05, False, [hybrid, local],
                "ratio ≤ 1.05 = within 5 % (or faster)")
    if _ok(gen):
        row("4. rollout tokens/s vs bare generate", _med(gen, "ours_tokens_per_s"), "tok/s", "model.generate (KV cache)",
            _med(gen, "bare_tokens_per_s"), 0.9, True, [gen])
    if _ok(rm) and _ok(rm_trl):
        row("5. RM training pairs/s vs TRL", _med(rm, "pairs_per_s"), "pairs/s",
            f"TRL {rm_trl.get('trl_version', '')} RewardTrainer", _med(rm_trl, "pairs_per_s"), 1.5, True, [rm, rm_trl])
    for key, label in (("ray_ppo", "separate"), ("hybrid_ppo", "hybrid")):
        section = results.get(key)
        if _ok(section) and _ok(mm):
            flops = section["flops"]["total"] / _med(section, "seconds")
            row(f"6. achieved FLOP/s of the PPO iteration vs dense matmul ({label} layout)", flops, "FLOP/s",
                f"torch.mm {mm['n']}² fp32 ({mm['threads']} threads, best)", _med(mm, "best_flops"), None, True,
                [section, mm], "fraction of the machine's matmul peak; no target")
    return rows


def _fmt(value: float, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "FLOP/s":
        return f"{value / 1e9:.2f} GFLOP/s"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}".strip()
    return f"{value:.3g} {unit}".strip()


def table(results: dict, rows: list[dict]) -> str:
    lines = []
    head = f"{'measurement':58} {'ours':>16} {'baseline':>16} {'ratio':>7} {'target':>8}  status"
    lines += [head, "-" * len(head)]
    for r in rows:
        target = "" if r["target"] is None else ("≥" if r["target_is_min"] else "≤") + f"{r['target']:g}"
        status = {True: "met", False: "NOT met", None: "-"}[r["met"]]
        if not r["reliable"]:
            status += " (UNRELIABLE: busy machine)"
        lines.append(f"{r['measurement']:58} {_fmt(r['value'], r['unit']):>16} {_fmt(r['baseline_value'], r['unit']):>16} "
                     f"{r['ratio']:>7.3f} {target:>8}  {status}")
        lines.append(f"{'':60}baseline: {r['baseline']}" + (f"; {r['note']}" if r["note"] else ""))
    for key, label in (("ray_ppo", "Ray"), ("hybrid_ppo", "Ray hybrid"), ("local_ppo", "in-process")):
        s = results.get(key)
        if _ok(s):
            med = s["median"]
            stages = "  ".join(f"{k}={med.get('stage/' + k, math.nan):.3f}" for k in STAGE_ORDER if "stage/" + k in med)
            lines.append(f"stages, {label} (s/iteration, worker-side; sync = rest of the end-to-end time): {stages}")
    trl = results.get("trl_ppo")
    if _ok(trl):
        lines.append(f"TRL PPO: {_med(trl, 'seconds'):.3f} s/iteration, of which generate "
                     f"{_med(trl, 'stage/generate'):.3f} s (policy+value update is one optimizer step in TRL)")
    mem = []
    for key in ("ray_ppo", "hybrid_ppo", "local_ppo", "trl_ppo", "rm_ours", "rm_trl", "rm_trl_current", "generation"):
        s = results.get(key)
        if _ok(s) and s.get("memory"):
            mem.append(f"{key}: " + ", ".join(f"{k}={v:.0f}" for k, v in s["memory"].items()))
    if mem:
        lines.append("peak RSS (MiB): " + " | ".join(mem))
    scaling = results.get("scaling")
    if _ok(scaling):
        pts = "  ".join(f"T={p['response_len']},B={p['batch']}: {_fmt(p['median'].get('seconds', math.nan), 's')}"
                        + ("" if p["reliable"] else "*") for p in scaling["points"])
        lines.append(f"scaling, Ray PPO s/iteration (* = unreliable): {pts}")
    for key, s in results.items():
        if isinstance(s, dict) and "error" in s:
            lines.append(f"section {key} FAILED: {s['error'].strip().splitlines()[-1] if s['error'].strip() else '?'}")
        elif isinstance(s, dict) and s.get("reliable") is False and key == "scaling":
            lines.append("section scaling: some points had busy iterations (marked *) — UNRELIABLE")
        elif isinstance(s, dict) and s.get("reliable") is False:
            lines.append(f"section {key}: only {s.get('clean_iterations')} clean of {s.get('measured_iterations')} "
                         f"measured iterations (others used up to {s.get('max_foreign_cores', 0):.2f} cores) — UNRELIABLE")
    return "\n".join(lines)
