"""PyTorch <-> ascl_jax conversion (ascl_jax.torchio) against PyTorch modules written here, in the
layouts of the reference code (ACL's dual-BN ResNet-18 with its projection head, a torchvision-style
ResNet-20, ASCL's PreAct ResNet-18, TRADES' WideResNet and SmallCNN), independent of the package's
own export modules: random weights and BN statistics -> convert -> equal outputs (eval mode), equal
outputs and BN running-statistics updates after one train-mode forward, to 1e-5 (relative, against
the reference module run in float64: float32 PyTorch and float32 JAX each lie ~7e-6 from it after
ResNet-18's 17 train-mode BNs, so float32 against float32 would compare two roundings); JAX -> torch
-> JAX exact; the package's exported module gives the same outputs; bad checkpoints name the key and shapes.

The WideResNet is a depth-10, widen-2 instance of the same code (ascl_jax ``WideResNet(10, 2)``,
TRADES' layout) to keep the test cheap; ResNet-18 and PreAct ResNet-18 run at 16x16 input (their last
stage is then 2x2: at 8x8 it is 1x1 and its train-mode BN normalises over the 8 batch rows only, an
ill-conditioned statistic where float32 itself drifts past 1e-5).
torch is a required test dependency (``ascl_jax[torch]``): a missing torch fails here."""

from __future__ import annotations

import copy
import json
import os

import flax.linen as nn_jax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ascl_jax import config as config_lib
from ascl_jax import models, torchio
from ascl_jax.models import layers
from ascl_jax.models import wideresnet as wrn_lib
from ascl_jax.models.norm import Norm

torch.set_num_threads(1)
TOL = 1e-5
# Train-mode output of ACL's 3-BN projection head: float32 PyTorch itself lies 2e-5 from float64
# there (three BN1d in a row, each over the batch rows only), so both float32 results get 1e-4.
TOL_TRAIN_HEAD = 1e-4
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR = models.NORMALIZATION["cifar10"]


# ----------------------------------------------------------------------------- reference modules


class DualBNRef(nn.Module):
    """ACL batch_norm_multiple with bn_names ['normal', 'pgd']."""

    def __init__(self, c, dim=2):
        super().__init__()
        cls = nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
        self.bn_list = nn.ModuleList([cls(c), cls(c)])

    def forward(self, x, name):
        return self.bn_list[{"normal": 0, "pgd": 1}[name]](x)


class ACLBlockRef(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = DualBNRef(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = DualBNRef(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Module()
            self.downsample.conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.downsample.bn = DualBNRef(cout)

    def forward(self, x, name):
        out = F.relu(self.bn1(self.conv1(x), name))
        out = self.bn2(self.conv2(out), name)
        idt = x if self.downsample is None else self.downsample.bn(self.downsample.conv(x), name)
        return F.relu(out + idt)


class ACLProjHeadRef(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.fc1, self.bn1 = nn.Linear(ch, ch), DualBNRef(ch, 1)
        self.fc2, self.bn2 = nn.Linear(ch, ch, bias=False), DualBNRef(ch, 1)
        self.fc3, self.bn3 = nn.Linear(ch, ch, bias=False), DualBNRef(ch, 1)

    def forward(self, x, name):
        x = F.relu(self.bn1(self.fc1(x), name))
        x = F.relu(self.bn2(self.fc2(x), name))
        return self.bn3(self.fc3(x), name)


class ACLResNet18Ref(nn.Module):
    """ACL resnet_multi_bn.resnet18(bn_names=['normal','pgd']) with fc = proj_head (pre-training)."""

    def __init__(self):
        super().__init__()
        self.normalize = nn.Module()
        self.normalize.register_buffer("mean", torch.tensor(IMAGENET[0]))
        self.normalize.register_buffer("std", torch.tensor(IMAGENET[1]))
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = DualBNRef(64)
        cin = 64
        for i, w in enumerate((64, 128, 256, 512)):
            blocks = [ACLBlockRef(cin, w, 1 if i == 0 else 2), ACLBlockRef(w, w, 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = w
        self.fc = ACLProjHeadRef(512)

    def features(self, x, name):
        x = (x - self.normalize.mean[None, :, None, None]) / self.normalize.std[None, :, None, None]
        x = F.relu(self.bn1(self.conv1(x), name))
        for i in range(4):
            for b in getattr(self, f"layer{i + 1}"):
                x = b(x, name)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def outputs(self, x, name):
        z = self.features(x, name)
        return {"z": z, "proj": self.fc(z, name)}


class TVBlockRef(nn.Module):
    """torchvision BasicBlock with downsample = Sequential(conv1x1, BN)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet20Ref(nn.Module):
    """He et al. CIFAR ResNet-20 (projection shortcuts), torchvision names, p2 head under head."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("std", torch.tensor(std), persistent=False)
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        cin = 16
        for i, w in enumerate((16, 32, 64)):
            blocks = [TVBlockRef(cin if j == 0 else w, w, 2 if (i and not j) else 1) for j in range(3)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = w
        self.fc = nn.Linear(64, 10)
        self.head = nn.Module()
        self.head.fc1 = nn.Linear(64, 200, bias=False)
        self.head.fc2 = nn.Linear(200, 128, bias=False)

    def outputs(self, x, name=None):
        x = (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]
        x = F.relu(self.bn1(self.conv1(x)))
        z = self.layer3(self.layer2(self.layer1(x))).mean((2, 3))
        return {"z": z, "proj": self.head.fc2(F.relu(self.head.fc1(z))), "logits": self.fc(z)}


class PreActBlockRef(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        sc = self.shortcut(out) if hasattr(self, "shortcut") else x
        return self.conv2(F.relu(self.bn2(self.conv1(out)))) + sc


class PreActRef(nn.Module):
    """ASCL preactresnet.PreActResNet18 (final BN 'bn', classifier 'linear')."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("std", torch.tensor(std), persistent=False)
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        cin = 64
        for i, w in enumerate((64, 128, 256, 512)):
            s = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(PreActBlockRef(cin, w, s), PreActBlockRef(w, w, 1)))
            cin = w
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, 10)

    def outputs(self, x, name=None):
        x = self.conv1((x - self.mean[None, :, None, None]) / self.std[None, :, None, None])
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        z = F.avg_pool2d(F.relu(self.bn(x)), x.shape[-1]).flatten(1)
        return {"z": z, "logits": self.linear(z)}


class WideBlockRef(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        if not self.equal:
            x = F.relu(self.bn1(x))
            out = x
        else:
            out = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return (x if self.equal else self.convShortcut(x)) + out


class WRNRef(nn.Module):
    """TRADES WideResNet (with its unused sub_block1), depth 10, widen 2."""

    def __init__(self, mean, std, depth=10, widen=2):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("std", torch.tensor(std), persistent=False)
        n = (depth - 4) // 6
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)

        def group(cin, cout, stride):
            g = nn.Module()
            g.layer = nn.Sequential(
                *[WideBlockRef(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)]
            )
            return g

        self.block1, self.sub_block1 = group(ch[0], ch[1], 1), group(ch[0], ch[1], 1)
        self.block2, self.block3 = group(ch[1], ch[2], 2), group(ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], 10)

    def outputs(self, x, name=None):
        x = self.conv1((x - self.mean[None, :, None, None]) / self.std[None, :, None, None])
        x = self.block3.layer(self.block2.layer(self.block1.layer(x)))
        z = F.relu(self.bn1(x)).mean((2, 3))
        return {"z": z, "logits": self.fc(z)}


class SmallCNNRef(nn.Module):
    """TRADES small_cnn.SmallCNN for 28x28x1 (VALID convs, 64*4*4 flattened NCHW)."""

    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = mean[0], std[0]
        self.feature_extractor = nn.Sequential()
        for i, (a, b) in enumerate(((1, 32), (32, 32), (32, 64), (64, 64))):
            self.feature_extractor.add_module(f"conv{i + 1}", nn.Conv2d(a, b, 3))
        self.classifier = nn.Module()
        self.classifier.fc1 = nn.Linear(64 * 4 * 4, 200)
        self.classifier.fc2 = nn.Linear(200, 200)
        self.classifier.fc3 = nn.Linear(200, 10)

    def outputs(self, x, name=None):
        x = (x - self.mean) / self.std
        fe = self.feature_extractor
        x = F.max_pool2d(F.relu(fe.conv2(F.relu(fe.conv1(x)))), 2)
        x = F.max_pool2d(F.relu(fe.conv4(F.relu(fe.conv3(x)))), 2)
        c = self.classifier
        z = F.relu(c.fc2(F.relu(c.fc1(x.reshape(-1, 64 * 4 * 4)))))
        return {"z": z, "logits": c.fc3(z)}


class SmallWRN(nn_jax.Module):
    """ascl_jax's model call with a depth-10, widen-2 WideResNet encoder (same code as wrn34_10)."""

    arch: str = "wrn34_10"
    head: str = "identity"
    bn_type: str = "single"
    num_classes: int = 10
    image_shape: tuple = (8, 8, 3)
    mean: tuple = CIFAR[0]
    std: tuple = CIFAR[1]
    cnn_padding: str = "auto"
    proj_dim: int = 128
    proj_hidden: int = 200
    mlp_dim: int | None = None
    mlp_layers: int = 3
    bn_momentum: float = 0.9

    @nn_jax.compact
    def __call__(self, x, *, train, bn="clean"):
        x = (x - jnp.asarray(self.mean)) / jnp.asarray(self.std)
        z = wrn_lib.WideResNet(10, 2, norm=Norm(), name="encoder")(x, train=train, bn=bn)
        return {"z": z, "proj": z, "logits": layers.linear(z, self.num_classes, name="classifier")}


# ----------------------------------------------------------------------------- cases


def _model(arch, shape, bn="single", head="identity", norm="cifar10"):
    cfg = dict(arch=arch, bn=bn, head=head, normalization=norm)
    return models.build_model(cfg, num_classes=10, image_shape=shape)


CASES = {
    # name: (reference factory, ascl_jax model factory, image shape, parts read, bn names (ref, jax))
    "resnet18_acl_dual": (
        ACLResNet18Ref,
        lambda: _model("resnet18", (16, 16, 3), "dual", "acl_mlp", "imagenet"),
        (16, 16, 3),
        ("encoder", "head"),
        ("pgd", "adv"),
    ),
    "resnet20_p2": (
        lambda: ResNet20Ref(*CIFAR),
        lambda: _model("resnet20", (8, 8, 3), head="p2"),
        (8, 8, 3),
        torchio.PARTS,
        (None, "clean"),
    ),
    "preact_resnet18": (
        lambda: PreActRef(*CIFAR),
        lambda: _model("preact_resnet18", (16, 16, 3)),
        (16, 16, 3),
        torchio.PARTS,
        (None, "clean"),
    ),
    "wrn_10_2": (lambda: WRNRef(*CIFAR), SmallWRN, (8, 8, 3), torchio.PARTS, (None, "clean")),
    "cnn_28x28": (
        lambda: SmallCNNRef(*models.NORMALIZATION["digits"]),
        lambda: _model("cnn", (28, 28, 1), norm="digits"),
        (28, 28, 1),
        torchio.PARTS,
        (None, "clean"),
    ),
}


def _randomise(module, seed=0):
    """Random weights (PyTorch init) and non-trivial BN affine parameters / running statistics."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            m.reset_parameters()
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return module


def _bn_state(module):
    return {k: v.numpy().copy() for k, v in module.state_dict().items() if "running" in k}


def _close(a, b, what, tol=TOL):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err = float(np.max(np.abs(a - b) / (1.0 + np.abs(b))))
    assert err < tol, f"{what}: max relative error {err}"


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    ref_fn, model_fn, shape, parts, names = CASES[request.param]
    ref = _randomise(ref_fn())
    model = model_fn()
    variables, unused = torchio.from_state_dict(ref.state_dict(), model, parts=parts)
    assert unused == []
    full = variables
    if "classifier" not in parts:  # ACL pre-training checkpoint: no classifier; a zero one
        tmpl = torchio.template(model)["params"]["classifier"]
        zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), tmpl)
        full = {**variables, "params": {**variables["params"], "classifier": zeros}}
    x = np.random.RandomState(1).rand(8, *shape).astype(np.float32)
    ref64 = copy.deepcopy(ref).double()
    return dict(
        name=request.param, ref=ref, ref64=ref64, model=model, variables=full, parts=parts, x=x, names=names
    )


def test_eval_outputs_equal(case):
    ref, model, x = case["ref64"], case["model"], case["x"]
    ref_bn, bn = case["names"]
    with torch.no_grad():
        want = ref.eval().outputs(_nchw(x).double(), ref_bn)
    v = case["variables"]
    got = jax.jit(lambda v, x: model.apply(v, x, train=False, bn=bn))(v, x)
    assert want.keys() <= got.keys()
    for k in want:
        _close(got[k], want[k].numpy(), f"{case['name']} eval {k}")


def test_train_step_bn_statistics_equal(case):
    """One train-mode forward: equal outputs (batch statistics) and equal running mean / var."""
    ref, model, x = copy.deepcopy(case["ref64"]), case["model"], case["x"]
    ref_bn, bn = case["names"]
    v = case["variables"]
    before = _bn_state(ref)
    ref.train()
    with torch.no_grad():
        want = ref.outputs(_nchw(x).double(), ref_bn)
    ref.eval()
    got, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, bn=bn, mutable=["batch_stats"]))(v, x)
    for k in want:
        tol = TOL_TRAIN_HEAD if (k == "proj" and model.head == "acl_mlp") else TOL
        _close(got[k], want[k].numpy(), f"{case['name']} train {k}", tol)
    new_v = {"params": v["params"], "batch_stats": upd["batch_stats"]}
    sd, _ = torchio.from_state_dict(ref.state_dict(), model, parts=case["parts"])
    for path, a in jax.tree_util.tree_leaves_with_path(new_v["batch_stats"]):
        b = sd["batch_stats"]
        for p in path:
            b = b[p.key]
        _close(a, b, f"{case['name']} running stat {jax.tree_util.keystr(path)}")
    after = _bn_state(ref)
    moved = sum(not np.array_equal(before[k], after[k]) for k in before)
    if before:
        assert moved > 0  # the step did update statistics (the comparison above is not vacuous)
    if case["name"] == "resnet18_acl_dual":  # only the 'pgd' / 'adv' set moved
        assert all(np.array_equal(before[k], after[k]) for k in before if ".bn_list.0." in k)
        assert all(not np.array_equal(before[k], after[k]) for k in before if ".bn_list.1." in k)


def test_round_trip_exact_and_exported_module(case):
    """JAX -> torch -> JAX is bit-exact; the package's module (strict load) equals the reference."""
    model, x = case["model"], case["x"]
    v = case["variables"]
    sd = torchio.to_state_dict(v, model)
    back, unused = torchio.from_state_dict(sd, model)
    assert not unused
    flat_a = jax.tree_util.tree_leaves_with_path(v)
    flat_b = dict(jax.tree_util.tree_leaves_with_path(back))
    assert len(flat_a) == len(flat_b)
    for path, a in flat_a:
        assert np.array_equal(np.asarray(a), flat_b[path]), jax.tree_util.keystr(path)
    kw = dict(wrn_depth=10, wrn_widen=2) if case["name"] == "wrn_10_2" else {}
    module = torchio.to_module(v, model, **kw)
    ref_bn, bn = case["names"]
    with torch.no_grad():
        got = module.forward_all(_nchw(x), bn)
        want = case["ref"].eval().outputs(_nchw(x), ref_bn)
    for k in want:
        _close(got[k].numpy(), want[k].numpy(), f"{case['name']} exported module {k}")


def test_reference_layouts_load_strictly():
    """The package's export uses the reference names: the state_dict of a torchvision-style
    ResNet-20 / TRADES SmallCNN loads with no key left over, and the export loads back into them."""
    ref = _randomise(SmallCNNRef(*models.NORMALIZATION["digits"]))
    model = _model("cnn", (28, 28, 1), norm="digits")
    v, unused = torchio.from_state_dict(ref.state_dict(), model)
    assert unused == []
    sd = torchio.to_torch_state_dict(v, model)
    sd = {k: t for k, t in sd.items() if not k.startswith("normalize.")}
    ref.load_state_dict(sd, strict=True)


# ----------------------------------------------------------------------------- bad input, files


@pytest.fixture(scope="module")
def tiny():
    model = _model("tiny", (8, 8, 3), head="p1")
    module = _randomise(torchio.build_module(model))
    return model, {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_missing_key_is_named(tiny):
    model, sd = tiny
    sd = dict(sd)
    del sd["bn2.running_var"]
    with pytest.raises(torchio.TorchCheckpointError, match=r"'bn2\.running_var' is missing \(shape \(16,\)"):
        torchio.from_state_dict(sd, model)


def test_mismatched_shape_names_both_shapes(tiny):
    model, sd = tiny
    sd = dict(sd, **{"conv2.weight": torch.zeros(16, 8, 5, 5)})
    with pytest.raises(
        torchio.TorchCheckpointError,
        match=r"'conv2\.weight' has shape \(16, 8, 5, 5\).*needs \(16, 8, 3, 3\)",
    ):
        torchio.from_state_dict(sd, model)
    wide = _model("tiny", (8, 8, 3), head="p1")
    sd2 = dict(tiny[1], **{"fc.weight": torch.zeros(100, 16), "fc.bias": torch.zeros(100)})
    with pytest.raises(
        torchio.TorchCheckpointError, match=r"'fc\.weight' has shape \(100, 16\).*needs \(10, 16\)"
    ):
        torchio.from_state_dict(sd2, wide)


def test_unexpected_key_strict_and_parts(tiny):
    model, sd = tiny
    extra = dict(sd, **{"layer9.conv.weight": torch.zeros(3)})
    with pytest.raises(torchio.TorchCheckpointError, match=r"'layer9\.conv\.weight'.*belongs to no variable"):
        torchio.from_state_dict(extra, model)
    v, unused = torchio.from_state_dict(extra, model, parts=("encoder",), strict=False)
    assert set(v["params"]) == {"encoder"} and "layer9.conv.weight" in unused and "fc.weight" in unused


def test_dual_checkpoint_into_single_model_picks_branch():
    dual = _model("tiny", (8, 8, 3), bn="dual")
    single = _model("tiny", (8, 8, 3))
    module = _randomise(torchio.build_module(dual), seed=3)
    sd = module.state_dict()
    with pytest.raises(torchio.TorchCheckpointError, match="dual BN.*bn_branch"):
        torchio.from_state_dict(sd, single)
    for branch, idx in (("clean", 0), ("adv", 1)):
        v, unused = torchio.from_state_dict(sd, single, bn_branch=branch)
        assert not unused
        np.testing.assert_array_equal(
            v["batch_stats"]["encoder"]["bn1"]["var"], sd[f"bn1.bn_list.{idx}.running_var"].numpy()
        )
        np.testing.assert_array_equal(
            v["params"]["encoder"]["bn2"]["scale"], sd[f"bn2.bn_list.{idx}.weight"].numpy()
        )


def test_normalization_mismatch_is_an_error(tiny):
    model, sd = tiny
    sd = dict(sd, **{"normalize.mean": torch.tensor(IMAGENET[0])})
    with pytest.raises(torchio.TorchCheckpointError, match="normalize.mean.*model.normalization"):
        torchio.from_state_dict(sd, model)


def test_checkpoint_files_containers_prefixes_and_export(tiny, tmp_path):
    model, sd = tiny
    path = str(tmp_path / "ckpt.pth")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    v, unused = torchio.load_variables(path, model)
    assert not unused
    np.testing.assert_array_equal(
        v["params"]["encoder"]["conv1"]["kernel"], sd["conv1.weight"].numpy().transpose(2, 3, 1, 0)
    )
    out = str(tmp_path / "export.pt")
    torchio.save_export(out, v, model)
    with pytest.raises(FileExistsError):
        torchio.save_export(out, v, model)
    module = torchio.module_from_export(out)
    x = np.random.RandomState(0).rand(2, 8, 8, 3).astype(np.float32)
    want = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
    with torch.no_grad():
        got = module.forward_all(_nchw(x))
    for k in ("z", "proj", "logits"):
        _close(got[k].numpy(), want[k], f"export {k}")
    with pytest.raises(FileNotFoundError):
        torchio.read_checkpoint(str(tmp_path / "absent.pt"))


def test_config_torch_checkpoint_must_exist(tmp_path):
    c = config_lib.base_config()
    c.init.torch_checkpoint = str(tmp_path / "absent.pt")
    with pytest.raises(config_lib.ConfigError, match="init.torch_checkpoint"):
        config_lib.validate(c)
    p = tmp_path / "there.pt"
    p.write_bytes(b"")
    c.init.torch_checkpoint = str(p)
    config_lib.validate(c)
    assert os.path.isfile(c.init.torch_checkpoint)


def test_finetune_starts_from_torch_checkpoint(tmp_path):
    """init.torch_checkpoint -> train.pretrained_variables: an ACL-style dual-BN checkpoint with a
    projection head gives a single-BN model its init.bn_branch set, no head, a zero classifier."""
    from ascl_jax import train

    c = config_lib.base_config()
    c.method = "trades_finetune"
    c.model.arch, c.model.bn, c.model.head = "tiny", "single", "identity"
    model, info = train.build_model(c)
    dual = models.build_model(
        dict(c.model, bn="dual", head="acl_mlp"), num_classes=10, image_shape=info["image_shape"]
    )
    sd = _randomise(torchio.build_module(dual), seed=5).state_dict()
    path = str(tmp_path / "acl.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    c.init.torch_checkpoint, c.init.bn_branch = path, "adv"
    config_lib.validate(c)
    v = train.pretrained_variables(c, model, info["image_shape"])
    assert "head" not in v["params"]
    np.testing.assert_array_equal(v["params"]["classifier"]["kernel"], 0.0)
    np.testing.assert_array_equal(v["params"]["encoder"]["bn1"]["scale"], sd["bn1.bn_list.1.weight"].numpy())
    np.testing.assert_array_equal(
        v["batch_stats"]["encoder"]["bn2"]["mean"], sd["bn2.bn_list.1.running_mean"].numpy()
    )
    np.testing.assert_array_equal(
        v["params"]["encoder"]["conv2"]["kernel"], sd["conv2.weight"].numpy().transpose(2, 3, 1, 0)
    )


def test_evaluate_a_torch_checkpoint_with_a_best_checkpoint_config(tmp_path):
    """--mode evaluate of init.torch_checkpoint: the file is the headline (checkpoint 'last') even
    when the config selects eval.checkpoint='best' (the ASCL protocols); its clean accuracy is the
    PyTorch module's on the same test images."""
    from ascl_jax import data, train

    c = config_lib.base_config()
    c.model.arch = "tiny"
    e = dict(checkpoint="best", select_on="test", attacks=("clean",), sanity=False, num_examples=64)
    c.eval.update(e)
    c.analysis.enabled, c.progress_bar = False, False
    model, _ = train.build_model(c)
    module = _randomise(torchio.build_module(model), seed=2)
    c.init.torch_checkpoint = path = str(tmp_path / "m.pt")
    torch.save(module.state_dict(), path)
    report = train.evaluate_workdir(str(tmp_path / "out"), c)
    assert report["checkpoint"] == "last"
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["init"]["torch_checkpoint"] == path and written["eval"]["checkpoint"] == "last"
    assert c.eval.checkpoint == "best"  # the caller's config is not changed
    x, y = data.load_eval_arrays(c.data, "test", 64)
    with torch.no_grad():
        pred = module.eval()(_nchw(x)).numpy().argmax(-1)
    assert report["clean_accuracy"] == float(np.mean(pred == y))
