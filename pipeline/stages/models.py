"""Networks: the patch classifier (fused last three stages -> 1x1 classifier -> GAP) and PSPNet.

Both sit on a backbone that returns a list of stage outputs at output stride 8 for the last ones:
``resnet38d`` (the wide ResNet38 of Wu et al. used by the paper) or ``resnet_os8`` (a light basic-block
ResNet with dilated last stage, for CPUs). Weights start random; a local checkpoint can be loaded.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import BACKBONES, BackboneConfig, ClassifierConfig, SegConfig
from pipeline.device import place
from pipeline.errors import OEEMError


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


# ---------------------------------------------------------------------------- light ResNet, output stride 8
class SubsampledPointwiseConv(nn.Conv2d):
    """A strided 1x1 convolution computed as "keep every ``stride``-th pixel, then a 1x1 convolution": the same
    function and weights, but it never reaches oneDNN's strided 1x1 backward-weights kernel (``jit_1x1``), which
    corrupts the heap on channels-last tensors with fewer input channels than one vector register holds: below 16
    on AVX-512 (fp32 and bf16), below 8 on AVX2 (torch 2.13-2.14; docs/benchmarks.md#native-crashes-on-avx-512-cpus).
    Used only where that can happen."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias)


def pointwise_conv(cin: int, cout: int, stride: int) -> nn.Conv2d:
    """A bias-free 1x1 convolution (a residual block's shortcut) that is safe on every CPU (see above)."""
    if stride > 1 and cin < 16:
        return SubsampledPointwiseConv(cin, cout, 1, stride, bias=False)
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(pointwise_conv(cin, cout, stride), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + identity, inplace=True)


class ResNetOS8(nn.Module):
    """Stem (stride 2) + four stages with strides 1, 2, 2, 1 (dilation 2): stages at OS 2, 4, 8, 8.

    ``output_stride=16`` makes the last stage strided instead of dilated (OS 2, 4, 8, 16), the encoder of a
    U-Net. Stride and dilation do not change any weight's shape, so a classifier trained with OS 8 initialises
    an OS 16 encoder of the same widths exactly (in-domain initialisation, no ImageNet needed)."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), blocks: tuple[int, ...] = (1, 2, 2, 2),
                 output_stride: int = 8):
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4:
            raise OEEMError("resnet_os8 needs four widths and four block counts")
        if output_stride not in (8, 16):
            raise OEEMError(f"resnet_os8 supports output stride 8 or 16, not {output_stride}")
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        strides, dilations = ((1, 2, 2, 1), (1, 1, 1, 2)) if output_stride == 8 else ((1, 2, 2, 2), (1, 1, 1, 1))
        stages, cin = [], widths[0]
        for w, n, s, d in zip(widths, blocks, strides, dilations):
            layers = [BasicBlock(cin, w, s, 1 if s > 1 else d)] + [BasicBlock(w, w, 1, d) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.out_channels = list(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


# ---------------------------------------------------------------------------- ResNet38d (Wu et al.; PSA/SEAM)
class _ResBlock38(nn.Module):
    """Pre-activation residual block; returns its output and the BN-ReLU of its input (the fused feature)."""

    def __init__(self, cin: int, cmid: int, cout: int, stride: int = 1, first_dilation: int | None = None,
                 dilation: int = 1):
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.same_shape = cin == cout and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(cin)
        self.conv_branch2a = nn.Conv2d(cin, cmid, 3, stride, padding=first_dilation, dilation=first_dilation,
                                       bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(cmid)
        self.conv_branch2b1 = nn.Conv2d(cmid, cout, 3, padding=dilation, dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = pointwise_conv(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = F.relu(self.bn_branch2a(x))
        branch1 = x if self.same_shape else self.conv_branch1(pre)
        y = self.conv_branch2a(pre)
        y = self.conv_branch2b1(F.relu(self.bn_branch2b1(y)))
        return y + branch1, pre


class _BottleBlock38(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1, dropout: float = 0.0):
        super().__init__()
        self.same_shape = cin == cout and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(cin)
        self.conv_branch2a = pointwise_conv(cin, cout // 4, stride)
        self.bn_branch2b1 = nn.BatchNorm2d(cout // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(cout // 4, cout // 2, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(cout // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(cout // 2, cout, 1, bias=False)
        if not self.same_shape:
            self.conv_branch1 = pointwise_conv(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = F.relu(self.bn_branch2a(x))
        branch1 = x if self.same_shape else self.conv_branch1(pre)
        y = self.conv_branch2a(pre)
        y = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(y))))
        y = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(y))))
        return y + branch1, pre


class ResNet38d(nn.Module):
    """Returns [b3 out (256, OS4), relu(bn(b5 input)) (512, OS8), relu(bn(b6 input)) (1024, OS8),
    relu(bn7(b7 out)) (4096, OS8)]: the last three are what the paper's classifier fuses (5632 channels)."""

    def __init__(self):
        super().__init__()
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.b2 = _ResBlock38(64, 128, 128, stride=2)
        self.b2_1 = _ResBlock38(128, 128, 128)
        self.b2_2 = _ResBlock38(128, 128, 128)
        self.b3 = _ResBlock38(128, 256, 256, stride=2)
        self.b3_1 = _ResBlock38(256, 256, 256)
        self.b3_2 = _ResBlock38(256, 256, 256)
        self.b4 = _ResBlock38(256, 512, 512, stride=2)
        self.b4_rest = nn.ModuleList([_ResBlock38(512, 512, 512) for _ in range(5)])
        self.b5 = _ResBlock38(512, 512, 1024, first_dilation=1, dilation=2)
        self.b5_1 = _ResBlock38(1024, 512, 1024, dilation=2)
        self.b5_2 = _ResBlock38(1024, 512, 1024, dilation=2)
        self.b6 = _BottleBlock38(1024, 2048, dilation=4, dropout=0.3)
        self.b7 = _BottleBlock38(2048, 4096, dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(4096)
        self.out_channels = [256, 512, 1024, 4096]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.conv1a(x)
        for blk in (self.b2, self.b2_1, self.b2_2, self.b3, self.b3_1, self.b3_2):
            x, _ = blk(x)
        s4 = x
        x, _ = self.b4(x)
        for blk in self.b4_rest:
            x, _ = blk(x)
        x, f5 = self.b5(x)
        x, _ = self.b5_1(x)
        x, _ = self.b5_2(x)
        x, f6 = self.b6(x)
        x, _ = self.b7(x)
        return [s4, f5, f6, F.relu(self.bn7(x))]


class PlainEncoder(nn.Module):
    """The encoder of Ronneberger's U-Net: two 3x3 convolutions per level, max-pooling between levels, the first
    level at the input's own resolution (stages at OS 1, 2, 4, ...). Unlike ``resnet_os8`` it keeps a full-resolution
    stage, which is where gland borders are decided; it cannot start from the stage-1 classifier."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128, 256)):
        super().__init__()
        if len(widths) < 3:
            raise OEEMError("the unet encoder needs at least three widths, e.g. 16,32,64,128,256")
        levels, cin = [], 3
        for k, w in enumerate(widths):
            pool = [nn.MaxPool2d(2)] if k else []
            levels.append(nn.Sequential(*pool, _ConvBNReLU(cin, w), _ConvBNReLU(w, w)))
            cin = w
        self.stages = nn.ModuleList(levels)
        self.out_channels = list(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    if cfg.name == "resnet38d":
        net: nn.Module = ResNet38d()
    elif cfg.name == "resnet_os8":
        net = ResNetOS8(tuple(cfg.widths), tuple(cfg.blocks), cfg.output_stride)
    elif cfg.name == "unet":
        net = PlainEncoder(tuple(cfg.widths))
    else:
        raise OEEMError(f"unknown backbone {cfg.name!r}: choose one of {', '.join(BACKBONES)}")
    if cfg.pretrained:
        load_backbone_weights(net, cfg.pretrained)
    return net


def load_backbone_weights(net: nn.Module, path: str | Path) -> None:
    """Load backbone weights from a local file (a state dict, or a checkpoint with ``model``/``state_dict``).

    Keys may carry a ``backbone.`` prefix. Refused when no key matches, so a wrong file is not silently ignored.
    """
    state = safe_torch_load(path)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise OEEMError(f"{path}: none of its weights fit this backbone; is it a checkpoint for a different "
                        "network?")
    net.load_state_dict(usable, strict=False)


# ---------------------------------------------------------------------------- heads
class PatchClassifier(nn.Module):
    """Multi-label patch classifier. ``cam(x)`` is the 1x1 classifier applied before pooling (Eq. 1)."""

    def __init__(self, backbone: nn.Module, n_classes: int = 2):
        super().__init__()
        self.backbone = backbone
        fused = sum(backbone.out_channels[-3:])
        self.classifier = nn.Conv2d(fused, n_classes, 1, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)[-3:]
        size = feats[-1].shape[-2:]
        feats = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                 for f in feats]
        return torch.cat(feats, dim=1)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GAP then linear == linear then GAP (no bias): pooling the CAM gives the patch logits.
        return self.cam(x).mean(dim=(2, 3))


class _PPM(nn.Module):
    def __init__(self, cin: int, cout: int, scales=(1, 2, 3, 6)):
        super().__init__()
        self.scales = scales
        self.branches = nn.ModuleList(nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                                                    nn.ReLU(inplace=True)) for _ in scales)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        size = x.shape[-2:]
        return [F.interpolate(b(F.adaptive_avg_pool2d(x, s)), size=size, mode="bilinear", align_corners=False)
                for s, b in zip(self.scales, self.branches)]


class PSPNet(nn.Module):
    """Pyramid pooling (1/2/3/6) on the last stage, plus an auxiliary FCN head on the stage before it."""

    def __init__(self, backbone: nn.Module, n_classes: int = 2, channels: int = 512, dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        c_last, c_aux = backbone.out_channels[-1], backbone.out_channels[-2]
        self.ppm = _PPM(c_last, channels)
        self.bottleneck = nn.Sequential(nn.Conv2d(c_last + 4 * channels, channels, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.cls = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, n_classes, 1))
        aux = max(channels // 2, 8)
        self.aux = nn.Sequential(nn.Conv2d(c_aux, aux, 3, padding=1, bias=False), nn.BatchNorm2d(aux),
                                 nn.ReLU(inplace=True), nn.Dropout2d(dropout), nn.Conv2d(aux, n_classes, 1))

    def forward(self, x: torch.Tensor, with_aux: bool = False):
        size = x.shape[-2:]
        feats = self.backbone(x)
        last = feats[-1]
        y = self.cls(self.bottleneck(torch.cat([last, *self.ppm(last)], dim=1)))
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        if not with_aux:
            return y
        a = F.interpolate(self.aux(feats[-2]), size=size, mode="bilinear", align_corners=False)
        return y, a


class UNet(nn.Module):
    """A U-Net decoder on a backbone's four stages: each step upsamples x2, concatenates the skip connection of
    that stride and applies two 3x3 convolutions; logits at the input size. On a CPU it spends its FLOPs at low
    strides where glands (large objects) need context, and recovers sharp boundaries from the skips.
    ``with_aux`` returns a second (deep-supervision) head on the coarsest decoder step, as PSPNet's aux head."""

    def __init__(self, backbone: nn.Module, n_classes: int = 2, channels: int = 64, dropout: float = 0.1,
                 full_res: bool = False):
        super().__init__()
        self.backbone = backbone
        c = list(backbone.out_channels)
        self.bridge = _ConvBNReLU(c[-1], 2 * channels)
        # one decoder step per skip, finest last; widths halve from 2 * channels (at least 8)
        skips = c[-2::-1]
        # full_res: a last step at the input's own resolution, its skip two light convolutions on the input itself
        # (resnet_os8's stem already halves it) - gland borders are a few pixels wide at the working scale.
        self.input_block = None
        if full_res:
            fine = max(8, channels // 4)
            self.input_block = nn.Sequential(_ConvBNReLU(3, fine), _ConvBNReLU(fine, fine))
            skips.append(fine)
        widths = [max(8, (2 * channels) >> k) for k in range(len(skips))]
        self.decoders = nn.ModuleList()
        cin = 2 * channels
        for skip, cout in zip(skips, widths):
            self.decoders.append(nn.Sequential(_ConvBNReLU(cin + skip, cout), _ConvBNReLU(cout, cout)))
            cin = cout
        self.cls = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(cin, n_classes, 1))
        self.aux = nn.Conv2d(widths[0], n_classes, 1)

    def forward(self, x: torch.Tensor, with_aux: bool = False):
        size = x.shape[-2:]
        feats = self.backbone(x)
        skips = feats[-2::-1]
        if self.input_block is not None:
            skips.append(self.input_block(x))
        y = self.bridge(feats[-1])
        aux = None
        for k, (dec, skip) in enumerate(zip(self.decoders, skips)):
            if y.shape[-2:] != skip.shape[-2:]:
                y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = dec(torch.cat([y, skip], dim=1))
            if k == 0 and with_aux:
                aux = F.interpolate(self.aux(y), size=size, mode="bilinear", align_corners=False)
        y = self.cls(y)
        if y.shape[-2:] != size:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return (y, aux) if with_aux else y


# ---------------------------------------------------------------------------- networks from their settings
def build_classifier(cfg: ClassifierConfig) -> PatchClassifier:
    return PatchClassifier(build_backbone(cfg.backbone))


def build_segmenter(cfg: SegConfig) -> PSPNet | UNet:
    if cfg.decoder == "unet":
        return UNet(build_backbone(cfg.backbone), channels=cfg.head_channels, full_res=cfg.decoder_full_res)
    if cfg.decoder == "psp":
        return PSPNet(build_backbone(cfg.backbone), channels=cfg.head_channels)
    raise OEEMError(f"unknown decoder {cfg.decoder!r}: choose psp or unet")


# ---------------------------------------------------------------------------- checkpoints
def load_network(path: str | Path, kind: str, device: str | torch.device = "cpu"):
    """A ``classifier`` or ``segmentation`` checkpoint file as an eval-mode network in the process's layout, and
    the settings it was trained with."""
    from pipeline.config import from_dict

    ck = safe_torch_load(path)
    if ck.get("kind") != kind:
        raise OEEMError(f"{path}: not a {kind} checkpoint")
    cfg = from_dict(ClassifierConfig if kind == "classifier" else SegConfig, ck["config"])
    model = build_classifier(cfg) if kind == "classifier" else build_segmenter(cfg)
    load_model_state(model, ck["model"], path)
    return place(model, device).eval(), cfg


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with every batch norm folded into the convolution before it (eval mode):
    1.3-1.4x faster CAM and prediction forwards on 2 CPU cores in fp32 (benchmarks/speed.py), the same outputs
    to float rounding. The copy cannot train; the original is left as it is. Pre-activation blocks (ResNet38d's
    batch norm comes before its convolution) stay as they are."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for m in folded.modules():
        if isinstance(m, nn.Sequential):
            names = list(m._modules)
            for a, b in zip(names, names[1:]):
                if isinstance(m._modules[a], nn.Conv2d) and isinstance(m._modules[b], nn.BatchNorm2d):
                    m._modules[a] = fuse_conv_bn_eval(m._modules[a], m._modules[b])
                    m._modules[b] = nn.Identity()
        elif isinstance(m, BasicBlock):
            m.conv1, m.bn1 = fuse_conv_bn_eval(m.conv1, m.bn1), nn.Identity()
            m.conv2, m.bn2 = fuse_conv_bn_eval(m.conv2, m.bn2), nn.Identity()
    return place(folded)


def safe_torch_load(path: str | Path) -> dict:
    """``torch.load`` with ``weights_only=True`` (a checkpoint cannot run code), with readable errors."""
    path = Path(path)
    if not path.is_file():
        raise OEEMError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise OEEMError(f"{path}: not a readable weights-only checkpoint ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]})") from None


def settings_as_now(saved, default):
    """A saved settings dict as the current version reads it: a field added since then takes its default, so a
    checkpoint made before a setting existed still counts as made with that setting's default."""
    if saved is None:
        return default
    if isinstance(saved, dict) and isinstance(default, dict):
        return {**default, **{k: settings_as_now(v, default.get(k)) for k, v in saved.items()}}
    return saved


ON_MISMATCH = ("error", "restart")  # what to do with a checkpoint from other settings


def resume_training(store, stage: str, settings: dict, model: nn.Module, opt: torch.optim.Optimizer,
                    restart: bool, on_mismatch: str, defaults: dict | None = None) -> tuple[dict | None, str]:
    """Load a stage's checkpoint into ``model`` and ``opt`` when it was made with the same ``settings``.

    Returns (checkpoint or None, notice). A checkpoint from other settings is an error (``on_mismatch="error"``)
    or is moved aside and training starts afresh (``"restart"``); the notice then says where the old one went.
    ``defaults`` (same keys as ``settings``) fill in fields a checkpoint predates."""
    if on_mismatch not in ON_MISMATCH:
        raise OEEMError(f"on_mismatch={on_mismatch!r} is not one of {', '.join(ON_MISMATCH)}")
    ck_path = store.checkpoint_path(stage)
    if not ck_path.is_file():
        return None, ""
    if restart:  # --redo: afresh; the last model stays in place until the first new checkpoint, and is kept
        kept = store.retire_checkpoint(stage, copy=True)
        return None, f"training afresh as asked (previous model kept as {kept.name})"
    ck = safe_torch_load(ck_path)
    changed = [key for key, value in settings.items()
               if settings_as_now(ck.get(key), (defaults or {}).get(key)) != value]
    if changed:
        # the labels alone (new tags, new pseudo-masks) or the settings
        what = "labels (new tags or pseudo-masks)" if set(changed) <= {"labels_id", "labels_round"} else "settings"
        if on_mismatch == "error":
            raise OEEMError(f"{ck_path}: a checkpoint made with other {what} exists; pass --redo to train afresh "
                            "(the old one is kept as *.previous.pt)")
        kept = store.retire_checkpoint(stage)
        return None, f"{what} changed: training afresh (previous model kept as {kept.name})"
    load_model_state(model, ck["model"], ck_path)
    opt.load_state_dict(ck["optimizer"])
    return ck, ""


def load_model_state(model: nn.Module, state: dict, path: str | Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise OEEMError(f"{path}: the checkpoint does not match the model of this configuration ({first}); "
                        "use the preset it was trained with, or start afresh with --redo") from None
