"""Images/s of the ASCL Leaked PGD-10 train step (ResNet-20, batch 128, 32x32x3) on this machine,
beside the same step in PyTorch (bench/torch_ascl_step.py, channels-last) when a torch
interpreter is available (--torch-python, default .venv-torch/bin/python), in one run.

  .venv/bin/python bench/train_step.py [--batch 128] [--iters 5] [--devices 1]
Prints a table and one JSON line. The step is the real `ascl_jax.train.steps.ascl_step` under
jax.jit (PGD-10 in the library's default loop form, two train-mode forwards, masks + loss, SGD
update), state donated. Each side also times its PGD-10 attack alone (JAX: `steps.ce_attack`,
train-mode BN, as in the step), so "rest" = step - attack is the two train-mode forwards, the
loss, the backward and the update.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=128)
ap.add_argument("--iters", type=int, default=5)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument(
    "--torch-python", default=os.path.join(os.path.dirname(__file__), "..", ".venv-torch", "bin", "python")
)
ap.add_argument("--skip-torch", action="store_true")
ap.add_argument("--default-xla-flags", action="store_true", help="skip ascl_jax.xla_cpu.flags")
args = ap.parse_args()

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
if not args.default_xla_flags:
    from ascl_jax.xla_cpu import flags as xla_flags  # noqa: E402

    xla_flags.tune_cpu_flags()
import jax  # noqa: E402
import numpy as np  # noqa: E402
from timing import median_ms  # noqa: E402  (bench/timing.py, beside this script)

from ascl_jax import config as config_lib  # noqa: E402
from ascl_jax import models, parallel  # noqa: E402
from ascl_jax.train import steps as train_steps  # noqa: E402
from ascl_jax.train.optim import make_optimizer  # noqa: E402
from ascl_jax.train.state import create_train_state  # noqa: E402


def jax_step_figures():
    c = config_lib.resnet20_adam(config_lib.cifar_base("cifar10", "resnet20"))
    c.method, c.loss.strategy = "ascl", "leaked"
    c.optim.update(dict(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4))
    model = models.build_model(c.model, num_classes=10, image_shape=(32, 32, 3))
    tx, _ = make_optimizer(c.optim, 390, 390 * 200)
    mesh = parallel.make_mesh()
    repl, dsh = parallel.replicated(mesh), parallel.data_sharded(mesh)
    state = jax.jit(
        lambda: create_train_state(model, tx, jax.random.key(0), (32, 32, 3)), out_shardings=repl
    )()
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.random((args.batch, 32, 32, 3), np.float32),
        "label": rng.integers(0, 10, args.batch).astype(np.int32),
    }
    batch = parallel.to_global(batch, dsh)
    step = train_steps.make_train_step(c, model, state_sharding=repl, data_sharding=dsh)
    attack = jax.jit(
        lambda st, b: train_steps.ce_attack(model, st, c.attack, b["image"], b["label"], st.step_key())
    )
    out, last = {}, {"state": state}

    def run_step():
        last["state"], last["metrics"] = compiled(last["state"], batch)
        jax.block_until_ready(last["state"])

    with jax.set_mesh(mesh):
        t = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        out["compile_s"] = time.perf_counter() - t
        ms = median_ms(run_step, args.iters)
        out["attack_ms"] = median_ms(lambda: jax.block_until_ready(attack(last["state"], batch)), args.iters)
    m = last["metrics"]
    out.update(
        ascl_step_ms=ms,
        ascl_img_per_s=args.batch / (ms / 1000),
        devices=jax.device_count(),
        jax=jax.__version__,
        loss=float(m["loss"]),
    )
    return out


def torch_figures():
    if args.skip_torch or not os.path.exists(args.torch_python):
        return None
    r = subprocess.run(
        [
            args.torch_python,
            os.path.join(os.path.dirname(__file__), "torch_ascl_step.py"),
            "--threads",
            str(args.threads),
            "--channels-last",
            "--batch",
            str(args.batch),
            "--iters",
            str(args.iters),
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        print("torch run failed:", r.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    j = jax_step_figures()
    t = torch_figures()
    print(f"ASCL Leaked PGD-10 train step, ResNet-20, batch {args.batch}")
    print(
        f"  JAX    : {j['ascl_img_per_s']:8.1f} img/s  ({j['ascl_step_ms']:.0f} ms/step, "
        f"compile {j['compile_s']:.1f} s, {j['devices']} device(s))"
    )
    if t:
        print(
            f"  PyTorch: {t['ascl_img_per_s']:8.1f} img/s  ({t['ascl_step_ms']:.0f} ms/step, "
            f"torch {t['torch']}, channels-last, {t['threads']} threads)"
        )
        print(f"  ratio JAX/PyTorch: {j['ascl_img_per_s'] / t['ascl_img_per_s']:.2f}")
    print(
        f"  of which the PGD-10 attack: JAX {j['attack_ms']:.0f} ms"
        + (f", PyTorch {t['attack_ms']:.0f} ms" if t and "attack_ms" in t else "")
    )
    print(
        f"  rest of the step:           JAX {j['ascl_step_ms'] - j['attack_ms']:.0f} ms"
        + (f", PyTorch {t['ascl_step_ms'] - t['attack_ms']:.0f} ms" if t and "attack_ms" in t else "")
    )
    j["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    print(json.dumps({"jax": j, "torch": t}))


if __name__ == "__main__":
    main()
