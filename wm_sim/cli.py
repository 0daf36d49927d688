"""The `wm-sim` command: `wm-sim <verb> key=value ...`.

Each verb is a short function that builds its parts from one config dataclass; this module only
finds the verb, composes its config and turns a WmSimError into one line and exit code 2.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

from wm_sim.config import describe_options, load_config
from wm_sim.errors import WmSimError


@dataclass(frozen=True)
class Verb:
    schema: str  # "module:ConfigClass"
    run: str  # "module:function", called with the config
    summary: str
    # "module:function" turning the command line's overrides into the overrides to compose, e.g.
    # a parameter file's values placed before them (so what the command line says still wins)
    expand: str | None = None


VERBS: dict[str, Verb] = {
    "collect": Verb(
        schema="wm_sim.collect:CollectConfig",
        run="wm_sim.collect:collect",
        summary="record episodes of a scripted policy in a MuJoCo task into a zarr dataset",
    ),
    "train": Verb(
        schema="wm_sim.train:TrainConfig",
        run="wm_sim.train:train",
        summary="train the world model on a dataset (checkpoints, validation, resume=auto)",
    ),
    "tune-decoder": Verb(
        schema="wm_sim.decoder_tuning:DecoderTuningConfig",
        run="wm_sim.decoder_tuning:tune_decoder",
        summary="train an anchored decoder on a frozen world model (keeps the static scene in long rollouts)",
    ),
    "check-data": Verb(
        schema="wm_sim.check_data:CheckDataConfig",
        run="wm_sim.check_data:check_data",
        summary="verify a dataset store's chunks (checksums included); repair=true drops damaged episodes",
    ),
    "evaluate": Verb(
        schema="wm_sim.evaluate:EvaluateConfig",
        run="wm_sim.evaluate:evaluate",
        summary="measure a checkpoint's open-loop fidelity and drift against recorded episodes",
    ),
    "demo": Verb(
        schema="wm_sim.demo:DemoConfig",
        run="wm_sim.demo:demo",
        summary="drive the shipped world model beside MuJoCo: side-by-side video, rewards, report",
    ),
    "train-policy": Verb(
        schema="wm_sim.train_policy:TrainPolicyConfig",
        run="wm_sim.train_policy:train_policy",
        summary="train an actor-critic policy inside the world model only (PPO on imagined rollouts)",
    ),
    "verify": Verb(
        schema="wm_sim.verify:VerifyConfig",
        run="wm_sim.verify:verify",
        summary="run a policy in MuJoCo and in the world model from the same starts: true vs imagined",
    ),
    "rank": Verb(
        schema="wm_sim.rank:RankConfig",
        run="wm_sim.rank:rank",
        summary="rank policies in imagination and in MuJoCo: Spearman, Pearson, MMRV, scatter plot",
    ),
    "package-policy": Verb(
        schema="wm_sim.policies.saved:PackagePolicyConfig",
        run="wm_sim.policies.saved:package_policy",
        summary="copy a trained policy without its training state (the shipped shipped:<task> policy)",
    ),
    "package": Verb(
        schema="wm_sim.package:PackageConfig",
        run="wm_sim.package:package",
        summary="bundle a checkpoint with start contexts and its evaluation (the shipped model)",
    ),
    "ros serve": Verb(
        schema="wm_sim.ros.serve:ServeConfig",
        run="wm_sim.ros.serve:serve",
        summary="serve a Gymnasium env over ROS 2 topics (lockstep or realtime; needs wm-sim[ros])",
        expand="wm_sim.ros.serve:with_params_file",
    ),
    "ros import-bag": Verb(
        schema="wm_sim.ros.bag_import:ImportBagConfig",
        run="wm_sim.ros.bag_import:import_bag",
        summary="convert a rosbag2 recording (sqlite3 or mcap) into a zarr dataset (needs wm-sim[ros])",
    ),
    "import-lerobot": Verb(
        schema="wm_sim.lerobot_import:ImportLeRobotConfig",
        run="wm_sim.lerobot_import:import_lerobot",
        summary="convert a LeRobot v3.0 folder (parquet + mp4) into a zarr dataset (needs wm-sim[lerobot])",
    ),
    "export-lerobot": Verb(
        schema="wm_sim.lerobot_export:ExportLeRobotConfig",
        run="wm_sim.lerobot_export:export_lerobot",
        summary="write a zarr dataset as a LeRobot v3.0 folder that LeRobot opens (needs wm-sim[lerobot])",
    ),
    "bench": Verb(
        schema="wm_sim.benchmarks.suites:BenchConfig",
        run="wm_sim.benchmarks.suites:bench",
        summary="run a benchmark suite; writes benchmarks/results/<machine>-<date>.json and the table",
    ),
}


def resolve(target: str):
    """The object a verb names as "module:name" (its schema, run or expand), imported only when used."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def usage() -> str:
    lines = ["usage: wm-sim <verb> key=value ...", "", "verbs:"]
    lines += [f"  {name:<17} {verb.summary}" for name, verb in VERBS.items()]
    lines += ["", "`wm-sim <verb> --help` lists a verb's options."]
    return "\n".join(lines)


def verb_help(name: str) -> str:
    verb = VERBS[name]
    lines = [f"usage: wm-sim {name} key=value ...", "", verb.summary, "", "options:"]
    for option, type_name, default, text in describe_options(resolve(verb.schema)):
        lines.append(f"  {f'{option}={default}':<32} {type_name:<5} {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, overrides = args[0], args[1:]
    if overrides and f"{name} {overrides[0]}" in VERBS:  # a two-word verb: `wm-sim ros serve ...`
        name, overrides = f"{name} {overrides[0]}", overrides[1:]
    if name not in VERBS:
        print(f"wm-sim: error: unknown verb {name!r}; expected one of: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    if any(a in ("-h", "--help") for a in overrides):
        print(verb_help(name))
        return 0
    verb = VERBS[name]
    try:
        if verb.expand is not None:
            overrides = resolve(verb.expand)(overrides)
        cfg = load_config(name, resolve(verb.schema), overrides)
        resolve(verb.run)(cfg)
    except WmSimError as exc:
        print(f"wm-sim {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wm-sim {name}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
