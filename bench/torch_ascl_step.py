"""PyTorch reference for bench/train_step.py: one ASCL Leaked PGD-10 train step on ResNet-20,
written after the authors' code (SPEC 1.1, 1.2, 1.6): PGD-10 CE (train-mode BN), two train-mode
forwards, Leaked selection masks on [z_nat; z_adv] with cosine similarity, masked log-softmax over
positives and selected negatives, VAT KL/(N*C), CE on natural and adversarial logits, SGD.
Run with the torch venv: .venv-torch/bin/python bench/torch_ascl_step.py --threads 2 --channels-last
Prints one JSON line. --device cuda, --arch resnet18 (Kuang-Liu ResNet-18: the same blocks, widths
64..512, [2, 2, 2, 2]) and --dtype bfloat16 (torch.autocast for the forwards; parameters, losses
and the perturbation stay float32) serve bench/gpu_check.py; on CUDA the JSON line also holds
torch.cuda.max_memory_allocated.
"""

import argparse
import json

import torch
import torch.nn.functional as F
from timing import median_ms  # bench/timing.py, beside this script

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--batch", type=int, default=128)
ap.add_argument("--iters", type=int, default=5)
ap.add_argument("--channels-last", action="store_true")
ap.add_argument("--device", default="cpu")
ap.add_argument("--arch", default="resnet20", choices=("resnet20", "resnet18"))
ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)


class Block(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = torch.nn.BatchNorm2d(cout)
        self.c2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = torch.nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = torch.nn.Sequential(
                torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return F.relu(y + (x if self.short is None else self.short(x)))


class ResNet20(torch.nn.Module):
    def __init__(self, stages=(3, 3, 3), widths=(16, 32, 64)):
        super().__init__()
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
            torch.nn.BatchNorm2d(widths[0]),
            torch.nn.ReLU(),
        )
        layers, cin = [], widths[0]
        for i, (n, f) in enumerate(zip(stages, widths)):
            for j in range(n):
                layers.append(Block(cin, f, 2 if (i > 0 and j == 0) else 1))
                cin = f
        self.layers = torch.nn.Sequential(*layers)
        self.fc = torch.nn.Linear(widths[-1], 10)

    def forward(self, x):
        z = self.layers(self.stem(x)).mean(dim=(2, 3))
        return self.fc(z), z


def leaked_scl(z, lab, prd, tau=0.07):
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    same_lab = (lab[:, None] == lab[None, :]) & ~eye
    diff_lab = lab[:, None] != lab[None, :]
    same_prd = (prd[:, None] == prd[None, :]) & ~eye
    pos = (same_lab & same_prd).float()
    neg = (diff_lab & same_prd).float()
    sim = F.cosine_similarity(z[:, None, :], z[None, :, :], dim=-1) / tau
    illegal = 1.0 - pos - neg
    logits = sim - 1e9 * illegal
    logprob = F.log_softmax(logits, dim=1)
    return (-(pos * logprob).sum(1) / pos.sum(1).clamp(min=1)).mean()


def main():
    dev = torch.device(args.device)
    net = ResNet20() if args.arch == "resnet20" else ResNet20((2, 2, 2, 2), (64, 128, 256, 512))
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    net = net.to(device=dev, memory_format=mf)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, generator=g).to(dev).contiguous(memory_format=mf)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(dev)
    eps, alpha = 8 / 255, 2 / 255
    bf16 = args.dtype == "bfloat16"

    def model(xx):  # the network's forward, under autocast for bfloat16 (float32 outputs)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits, z = net(xx)
        return logits.float(), z.float()

    def attack():
        net.train()
        xa = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(10):
            xa.requires_grad_(True)
            loss = F.cross_entropy(model(xa)[0], y, reduction="sum")
            (gx,) = torch.autograd.grad(loss, xa)
            with torch.no_grad():
                xa = torch.min(torch.max(xa + alpha * gx.sign(), x - eps), x + eps).clamp(0, 1)
        return xa.detach()

    def step():
        xa = attack()
        opt.zero_grad(set_to_none=True)
        ln, zn = model(x)
        la, za = model(xa)
        lab = torch.cat([y, y])
        prd = torch.cat([ln.argmax(1), la.argmax(1)]).detach()
        scl = leaked_scl(torch.cat([zn, za]).double(), lab, prd).float()
        vat = F.kl_div(F.log_softmax(la, 1), F.softmax(ln, 1), reduction="mean")
        loss = F.cross_entropy(ln, y) + F.cross_entropy(la, y) + scl + 2.0 * vat
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    ms = median_ms(lambda: (step(), sync()), args.iters)
    attack_ms = median_ms(lambda: (attack(), sync()), args.iters)
    out = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "channels_last": args.channels_last,
        "batch": args.batch,
        "device": args.device,
        "arch": args.arch,
        "dtype": args.dtype,
        "ascl_step_ms": ms,
        "ascl_img_per_s": args.batch / (ms / 1000),
        "attack_ms": attack_ms,
    }
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
        out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(dev))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
