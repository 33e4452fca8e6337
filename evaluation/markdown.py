"""The Markdown layout of each paper table in ``tables.md``: one function per layout, from a
results.json section to its table(s). Numbers are stored as fractions and printed as percentages;
a specialized head's cell of a model with one head (the section's ``num_heads`` is 1) is
``NOT_APPLICABLE``, as in the paper's baseline rows.
"""

from __future__ import annotations

import math

NOT_APPLICABLE = "N/A"


def one_head(section: dict) -> bool:
    """Whether the section's model has one head, hence no specialized head."""
    return section.get("num_heads") == 1


def pct(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * float(value):.1f}"


def grid(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def note(section: dict) -> str:
    parts = [f"normalization: {section.get('normalization', 'n/a')}"]
    heads = section.get("heads")
    if heads and heads.get("rule") != "config":
        parts.append(
            f"heads named by {heads['rule'].replace('_', '.').title()}: sound = head {heads['sound_head']}, "
            f"speech = head {heads['speech_head']}"
        )
    for key, value in sorted(section.get("settings", {}).items()):
        parts.append(f"{key}: {value}")
    counts = section.get("counts", {})
    if counts:
        parts.append("counts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return "_" + "; ".join(parts) + "_"


def _seg_cells(d: dict | None, na: bool = False) -> list[str]:
    if na:
        return [NOT_APPLICABLE] * 2
    d = d or {}
    return [pct(d.get("mAP")), pct(d.get("mIoU"))]


def table1(s: dict) -> str:
    out = []
    for pairing, r in sorted(s["results"].items()):
        out.append(f"**{pairing}-object pairs**\n")
        out.append(
            grid(
                ["Method", "Sim-Sound mAP", "Sim-Sound mIoU", "Sim-Speech mAP", "Sim-Speech mIoU"],
                [[s["label"], *_seg_cells(r["sound"]), *_seg_cells(r["speech"])]],
            )
        )
        extras = []
        for kind in ("sound", "speech"):
            e = r[kind].get("extras", {})
            extras.append(
                [
                    s["label"],
                    kind,
                    pct(e.get("cIoU")),
                    pct(e.get("AUC")),
                    pct(e.get("IIoU")),
                    pct(e.get("cIoU_adaptive")),
                    pct(e.get("AUC_adaptive")),
                ]
            )
        out.append("\n" + grid(["Method", "head", "cIoU", "AUC", "IIoU", "cIoU (adaptive)", "AUC (adaptive)"], extras))
        out.append(f"\nBoth heads localized (IoU >= 0.5) in the same query: {pct(r.get('joint_hit'))}\n")
        opp = r.get("opposite_head")
        if opp:
            out.append("Each object scored with the other head (lower than the right head = disentangled):\n")
            out.append(
                grid(
                    [
                        "Method",
                        "speech head on the sounding object mAP",
                        "mIoU",
                        "sound head on the named object mAP",
                        "mIoU",
                    ],
                    [[s["label"], *_seg_cells(opp.get("sound")), *_seg_cells(opp.get("speech"))]],
                )
            )
    return "\n".join(out)


def segmentation(s: dict) -> str:
    r, na = s["results"], one_head(s)
    sound, speech = r.get("sound", {}), r.get("speech", {})
    main = grid(
        [
            "Method",
            "Sound Total mAP",
            "Total mIoU",
            "Sound Head mAP",
            "Sound Head mIoU",
            "Speech Total mAP",
            "Total mIoU",
            "Speech Head mAP",
            "Speech Head mIoU",
        ],
        [
            [
                s["label"],
                *_seg_cells(sound.get("total")),
                *_seg_cells(sound.get("head"), na),
                *_seg_cells(speech.get("total")),
                *_seg_cells(speech.get("head"), na),
            ]
        ],
    )
    text = main + '\n\nSpeech over the object word\'s frames ("advanced"); over all frames ("basic"):\n\n'
    text += grid(
        ["Method", "Total mAP (basic)", "Total mIoU (basic)", "Speech Head mAP (basic)", "Speech Head mIoU (basic)"],
        [[s["label"], *_seg_cells(speech.get("basic_total")), *_seg_cells(speech.get("basic_head"), na)]],
    )
    return text


def _recall_cells(r: dict | None, k: int = 10, na: bool = False) -> list[str]:
    if na:
        return [NOT_APPLICABLE] * 2
    r = r or {}
    return [pct(r.get("I->A", {}).get(str(k))), pct(r.get("A->I", {}).get(str(k)))]


def retrieval(s: dict) -> str:
    r, na = s["results"], one_head(s)
    a, p = r.get("audioset", {}), r.get("places", {})
    main = grid(
        ["Method", "AudioSet Total I→A", "A→I", "Sound I→A", "A→I", "Places Total I→A", "A→I", "Speech I→A", "A→I"],
        [
            [
                s["label"],
                *_recall_cells(a.get("total")),
                *_recall_cells(a.get("sound_head"), na=na),
                *_recall_cells(p.get("total")),
                *_recall_cells(p.get("speech_head"), na=na),
            ]
        ],
    )
    rows = []
    for set_name, d in (("AudioSet", a), ("Places", p)):
        for head, rr in sorted(d.items()):
            rows.append(
                [set_name, head] + [pct(rr[direction][str(k)]) for direction in ("I->A", "A->I") for k in (1, 5, 10)]
            )
    full = grid(["set", "scores", "I→A R@1", "R@5", "R@10", "A→I R@1", "R@5", "R@10"], rows)
    return main + "\n\nAll heads, R@1/5/10:\n\n" + full


def table6(s: dict) -> str:
    if s.get("not_applicable"):
        return f"{s['label']}: {s['not_applicable']} ({NOT_APPLICABLE})"
    r = s["results"]
    row = [s["label"]]
    for cond in ("clean", "mixed"):
        c = r.get(cond, {})
        row += _recall_cells(c.get("places", {}).get("sound_head")) + _recall_cells(
            c.get("audioset", {}).get("speech_head")
        )
    table = grid(
        [
            "Method",
            "Clean Places Sound I→A",
            "A→I",
            "Clean AudioSet Speech I→A",
            "A→I",
            "Mixed Places Sound I→A",
            "A→I",
            "Mixed AudioSet Speech I→A",
            "A→I",
        ],
        [row],
    )
    d = r.get("disentanglement")
    if d:
        table += f"\n\nPred.Dis {pct(d.get('pred_dis'))}, Act.Dis {pct(d.get('act_dis'))}"
        wins, sound = d.get("win_share"), s.get("heads", {}).get("sound_head", 0)
        rows = d.get("heads", [0, 1])  # (a model with more heads: the rows are its speech and sound heads)
        if wins and sound in rows:
            row = rows.index(sound)
            table += (
                f"\n\nClean matched pairs on which the sound head scores above the speech head (those L_cor's "
                f"max over heads trains through the sound head): speech {pct(wins[row][0])}, "
                f"sound {pct(wins[row][1])}"
            )
    for name, pair in sorted(r.get("pairs", {}).items()):
        table += "\n\n" + _table6_pair(s["label"], name, pair)
    return table


def _table6_pair(label: str, name: str, pair: dict) -> str:
    """Table 6 for one pair of audio types: each type's set with the other type's head."""
    header, row = ["Method"], [label]
    for cond in ("clean", "mixed"):
        for set_name, heads in pair.get(cond, {}).items():
            for head, recalls in heads.items():
                header += [f"{cond.title()} {set_name} {head.replace('_', ' ')} I→A", "A→I"]
                row += _recall_cells(recalls)
    d = pair.get("disentanglement", {})
    return (
        f"Types {name} (heads {pair['heads'][0]}, {pair['heads'][1]}):\n\n"
        + grid(header, [row])
        + f"\n\nPred.Dis {pct(d.get('pred_dis'))}, Act.Dis {pct(d.get('act_dis'))}"
    )


def table7(s: dict) -> str:
    rows_a, rows_b = [], []
    for row in s["results"]["rows"]:
        na = bool(row.get("not_applicable"))  # a one-head model has no sound head
        rows_a.append([row["label"], *_recall_cells(row.get("audioset_sound_head"), na=na)])
        rows_b.append([row["label"], *_recall_cells(row.get("places_sound_head"), na=na)])
    return (
        "(a) AudioSet, sound head\n\n"
        + grid(["Method", "I→A", "A→I"], rows_a)
        + "\n\n(b) Places, sound head\n\n"
        + grid(["Method", "I→A", "A→I"], rows_b)
    )
