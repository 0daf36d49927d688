"""Saving and loading policies: weights in safetensors, everything else in JSON, never pickle.

A saved policy is a directory holding `policy.json` (schema version, kind, constructor arguments,
the task and spaces it acts in, training metadata) and `policy.safetensors`. Training runs keep
them as `step-NNNNNNN/` checkpoints beside a `last` link, written atomically like world-model
checkpoints. `shipped:<task>` names the policies packaged with wm-sim.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from wm_sim.policies.base import Policy

from wm_sim.checkpoint import LAST, commit_directory, read_json, read_tensors, write_json
from wm_sim.errors import WmSimError
from wm_sim.model_card import policy_card

POLICY_SCHEMA_VERSION = 1
POLICY_JSON, POLICY_TENSORS = "policy.json", "policy.safetensors"
SHIPPED_PREFIX = "shipped:"


def _kinds() -> dict[str, Any]:
    """kind -> class with a `restore(params, tensors, num_envs, seed)` classmethod."""
    from wm_sim.policies.actor_critic import ActorCriticPolicy
    from wm_sim.policies.latent_actor import LatentActorPolicy
    from wm_sim.policies.scripted import RandomPolicy

    return {"actor_critic": ActorCriticPolicy, "latent_actor": LatentActorPolicy, "random": RandomPolicy}


def save_policy(
    run_dir: str | Path,
    name: str,
    policy: Policy,
    meta: dict[str, Any],
    train_tensors: dict[str, torch.Tensor] | None = None,
    train_meta: dict[str, Any] | None = None,
    link_last: bool = True,
) -> Path:
    """Write `run_dir/name/` atomically (and point `run_dir/last` at it); returns its path."""
    from wm_sim.checkpoint import write_train_state

    if not policy.kind:
        raise WmSimError(
            f"{type(policy).__name__} cannot be saved: it reads the physics state; refer to it by name instead"
        )

    def write(staging: Path) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in policy.tensors().items()}
        save_file(tensors, str(staging / POLICY_TENSORS))
        write_json(
            staging / POLICY_JSON,
            {"schema_version": POLICY_SCHEMA_VERSION, "kind": policy.kind, "params": policy.params(), **meta},
        )
        write_train_state(staging, train_tensors, train_meta)

    return commit_directory(run_dir, name, write, POLICY_JSON, link_last=link_last)


def resolve_policy(ref: str | Path) -> Path:
    """A saved policy's directory from a path, a run directory (its `last`), or `shipped:<task>`."""
    text = str(ref)
    if text.startswith(SHIPPED_PREFIX):
        root = Path(str(resources.files("wm_sim") / "checkpoints"))
        directory = root / f"{text[len(SHIPPED_PREFIX) :]}-policy"
        if not (directory / POLICY_JSON).is_file():
            shipped = sorted(p.name.removesuffix("-policy") for p in root.glob("*-policy"))
            raise WmSimError(f"no shipped policy {text!r}; shipped policies: {shipped or 'none'}")
        return directory
    directory = Path(text)
    if (directory / LAST).exists() and not (directory / POLICY_JSON).exists():
        directory = directory / LAST
    if not (directory / POLICY_JSON).is_file():
        raise WmSimError(f"{directory} is not a saved policy: it has no {POLICY_JSON}")
    return directory.resolve()


def load_policy(ref: str | Path, num_envs: int = 1, seed: int = 0) -> tuple[Policy, dict[str, Any]]:
    """The policy saved at `ref` and its metadata; a tampered or foreign file is one clear error."""
    directory = resolve_policy(ref)
    meta = read_json(directory / POLICY_JSON)
    version = meta.get("schema_version")
    if version != POLICY_SCHEMA_VERSION:
        raise WmSimError(
            f"{directory / POLICY_JSON}: policy schema version {version!r}; this wm-sim reads version {POLICY_SCHEMA_VERSION}"
        )
    kinds = _kinds()
    kind = meta.get("kind")
    if kind not in kinds:
        raise WmSimError(
            f"{directory / POLICY_JSON}: unknown policy kind {kind!r}; expected one of {sorted(kinds)}"
        )
    tensors = read_tensors(directory / POLICY_TENSORS)
    try:
        policy = kinds[kind].restore(meta.get("params", {}), tensors, num_envs, seed)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WmSimError(
            f"{directory}: the weights or parameters do not match a {kind} policy (tampered, or from another version): {first}"
        ) from exc
    return policy, meta


@dataclass
class PackagePolicyConfig:
    """Options of `wm-sim package-policy`."""

    policy: str = field(
        default="outputs/policies/reacher-actor_critic", metadata={"help": "saved policy or run dir"}
    )
    out: str = field(
        default="wm_sim/checkpoints/reacher-policy", metadata={"help": "the directory to create"}
    )
    verified: str = field(
        default="", metadata={"help": "a `wm-sim verify` report (verify.json) of it, quoted in its MODEL_CARD.md"}
    )


def package_policy(cfg: PackagePolicyConfig) -> Path:
    """A standalone copy of a saved policy, weights and metadata without training state.

    What `shipped:<task>` policies are: `out=wm_sim/checkpoints/<task>-policy`.
    """
    source = resolve_policy(cfg.policy)
    policy, meta = load_policy(source)  # only a policy that loads is packaged
    out = Path(cfg.out)
    if out.exists():
        raise WmSimError(f"{out} already exists; remove it first to replace the packaged policy")
    out.parent.mkdir(parents=True, exist_ok=True)
    keep = {k: v for k, v in meta.items() if k not in ("schema_version", "kind", "params")}
    path = save_policy(
        out.parent, out.name, policy, {**keep, "packaged_from": str(cfg.policy)}, link_last=False
    )
    verified = read_json(Path(cfg.verified)) if cfg.verified else None
    card = policy_card({**keep, "kind": policy.kind, "packaged_from": str(cfg.policy)}, verified, out.name)
    (path / ".MODEL_CARD.md.partial").write_text(card)
    os.replace(path / ".MODEL_CARD.md.partial", path / "MODEL_CARD.md")
    size = sum(f.stat().st_size for f in path.iterdir()) / 1e6
    print(f"packaged {source} into {path} ({size:.1f} MB), with {path / 'MODEL_CARD.md'}")
    return path
