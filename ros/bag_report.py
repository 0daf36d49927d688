"""The import report of `wm-sim ros import-bag`: per topic, how its messages were used (read, used,
dropped, held, outside the episodes, waiting), as JSON for `import_report.json` and as printed lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from wm_sim.ros.bag_episodes import GAP, MARKER, START, Episode
from wm_sim.ros.bag_streams import IMAGE_ROLE, Stream, role_kind

from wm_sim.data.schema import DatasetInfo

if TYPE_CHECKING:
    from wm_sim.ros.bag_import import Actions, ImportBagConfig


def _topic_counts(stream: Stream, episodes: list[Episode]) -> dict:
    """read, used, dropped (several in one tick: the last kept), held, outside, waiting."""
    used, dropped, held, waiting = set(), 0, 0, 0
    for episode in episodes:
        picks = episode.picks.get(stream.role)
        waiting += episode.waiting.get(stream.role, 0)
        if picks is None:
            continue
        picks = picks[picks >= 0]
        if len(picks) == 0:
            continue
        distinct = np.unique(picks)
        used.update(distinct.tolist())
        dropped += int(picks[-1] - picks[0] + 1 - len(distinct))
        held += int((np.diff(picks) == 0).sum())
    read = len(stream.times)
    counts = {"read": read, "used": len(used), "dropped": dropped, "held": held}
    counts["outside"] = read - len(used) - dropped
    counts["waiting"] = waiting
    return counts


def build_report(
    cfg: ImportBagConfig,
    out: Path,
    info: DatasetInfo,
    streams: dict[str, Stream],
    episodes: list[Episode],
    short: list[Episode],
    fps_source: str,
    actions: Actions,
) -> dict:
    """Everything the import did, as JSON: per topic, how its messages were used."""
    topics = {}
    for role, stream in streams.items():
        topics[stream.topic] = {"role": role_kind(role), "type": stream.msgtype, "clock": stream.clock}
        if role.startswith(IMAGE_ROLE):
            topics[stream.topic]["camera"] = role[len(IMAGE_ROLE) :]
        if role != "marker":
            topics[stream.topic] |= _topic_counts(stream, episodes)
        else:
            topics[stream.topic]["read"] = len(stream.times)
    if cfg.joint_state_topic:
        velocities = " and velocities" if cfg.joint_velocity else ""
        state = f"joint positions{velocities} of {cfg.joint_state_topic}"
    else:
        state = "the previous row's action (no joint_state_topic); 0 on an episode's first row"
    return {
        "bag": info.collection["bag"],
        "out": str(out),
        "fps": info.fps,
        "fps_source": fps_source,
        "cameras": info.cameras,
        "gap_s": cfg.gap,
        "min_episode_steps": cfg.min_episode_steps,
        "rows": int(sum(len(e.ticks) for e in episodes)),
        "episodes": [
            {
                "start_s": round(int(e.ticks[0]) / 1e9, 6),
                "steps": len(e.ticks),
                "starts_at": e.segment.starts_at,
            }
            for e in episodes
        ],
        "left_out_short": [
            {"start_s": round(int(e.ticks[0]) / 1e9, 6), "steps": len(e.ticks)} for e in short
        ],
        "reward_missing_rows": sum(e.reward_missing for e in episodes),
        "state": state,
        "command_low": actions.low.tolist(),
        "command_high": actions.high.tolist(),
        "command_bounds": "given" if cfg.action_low else "observed",
        "commands_clipped": actions.clipped,
        "topics": topics,
    }


def _role_label(topic: dict) -> str:
    return f"image ({topic['camera']})" if "camera" in topic else topic["role"]


def _numbers(values: list[float]) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


def format_report(report: dict) -> str:
    """The report as a few lines and a table, as `wm-sim ros import-bag` prints it."""
    starts = [e["starts_at"] for e in report["episodes"]]
    lines = [
        f"{report['bag']} -> {report['out']}: {len(starts)} episodes, {report['rows']} rows at "
        f"{report['fps']:g} fps ({report['fps_source']})",
        f"  episodes: {starts.count(START)} from the bag's start, {starts.count(GAP)} after a silence longer "
        f"than gap={report['gap_s']:g} s, {starts.count(MARKER)} at a marker; "
        f"{len(report['left_out_short'])} shorter than min_episode_steps={report['min_episode_steps']} left out",
        f"  state: {report['state']}",
        f"  action: the command mapped linearly from [{_numbers(report['command_low'])}] .. "
        f"[{_numbers(report['command_high'])}] ({report['command_bounds']}) onto [-1, 1]; "
        f"{report['commands_clipped']} entries clipped",
    ]
    header = ("topic", "role", "type", "clock", "read", "used", "dropped", "held", "outside", "waiting")
    rows = [
        (topic, _role_label(t), t["type"], t["clock"], *(str(t.get(k, "")) for k in header[4:]))
        for topic, t in report["topics"].items()
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append(
            "  "
            + "  ".join(
                str(v).ljust(w) if i < 4 else str(v).rjust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    lines.append(
        "  dropped: superseded before the next tick (only the last kept); held: a tick reusing the "
        "previous tick's message (zero-order hold, nothing interpolated); outside: in no kept row "
        "(before an episode's first row, after its end, in a gap); waiting: ticks skipped before the "
        "topic's first message in an episode"
    )
    return "\n".join(lines)
