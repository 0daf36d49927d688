"""A ROS 2 client that floods a realtime server's commands and counts the frames it serves.

Run as its own process by the `ros` suite (`python -m wm_sim.benchmarks.ros_flood SECONDS
[--flood]`): it publishes random commands on `<namespace>/commands` as fast as rclpy lets it (a
misbehaving teleop node, a controller in a tight loop) and records the receive time of every
image the server publishes. It prints one JSON line: the served rate over the window after a
warm-up, the worst gap between frames, the server's overrun reports on /diagnostics and how many
commands it sent.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

WARM_UP_S = 2.0  # frames before this are not counted: discovery, the server's first steps


def measure(
    seconds: float,
    flood: bool,
    namespace: str = "/wm_sim",
    action_dim: int = 2,
    warm_up: float = WARM_UP_S,
    start_timeout: float = 120.0,
) -> dict:
    """Serve-side rate as a subscriber sees it over `seconds` from the server's first frame (the
    first `warm_up` not counted), with or without a command flood from this process."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float64MultiArray
    from wm_sim.ros import topics

    rclpy.init()
    node = rclpy.create_node("wm_sim_flood")
    qos = topics.Qos.make()
    received: list[float] = []
    overruns: list[float] = []
    node.create_subscription(
        Image, topics.join(namespace, topics.IMAGE), lambda msg: received.append(time.monotonic()), qos.sensor
    )
    node.create_subscription(
        DiagnosticArray,
        topics.DIAGNOSTICS,
        lambda msg: overruns.extend(time.monotonic() for s in msg.status if s.name.endswith("realtime step")),
        qos.reliable,
    )
    publisher = node.create_publisher(
        Float64MultiArray, topics.join(namespace, topics.COMMANDS), qos.reliable
    )
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    rng = np.random.default_rng(0)
    sent = 0
    opened = time.monotonic()
    try:
        while not received and time.monotonic() - opened < start_timeout:
            executor.spin_once(timeout_sec=0.05)
        if not received:
            raise SystemExit(f"no frame on {topics.join(namespace, topics.IMAGE)} within {start_timeout:g} s")
        start = received[0]
        while time.monotonic() - start < warm_up + seconds:
            if flood:
                publisher.publish(Float64MultiArray(data=rng.uniform(-1, 1, action_dim).tolist()))
                sent += 1
                executor.spin_once(timeout_sec=0.0)
            else:
                executor.spin_once(timeout_sec=0.01)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    counted = np.asarray([t for t in received if t - start >= warm_up])
    gaps = np.diff(counted) if len(counted) > 1 else np.zeros(0)
    return {
        "rate_hz": float(len(gaps) / gaps.sum()) if len(gaps) else 0.0,
        "frames": len(counted),
        "worst_gap_ms": float(gaps.max() * 1e3) if len(gaps) else None,
        "p99_gap_ms": float(np.percentile(gaps, 99) * 1e3) if len(gaps) else None,
        "overrun_reports": sum(t - start >= warm_up for t in overruns),
        "commands_per_s": sent / (warm_up + seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seconds", type=float)
    parser.add_argument("--flood", action="store_true", help="publish commands as fast as possible")
    parser.add_argument("--namespace", default="/wm_sim")
    parser.add_argument("--action-dim", type=int, default=2)
    parser.add_argument("--warm-up", type=float, default=WARM_UP_S, help="seconds not counted")
    args = parser.parse_args()
    figures = measure(args.seconds, args.flood, args.namespace, args.action_dim, args.warm_up)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
