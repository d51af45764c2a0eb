#!/usr/bin/env python3
"""PyTorch side of `omuda bench`: the same network, the same step, the same
thread count, the same table.

Usage (any Python with torch; `omuda bench --compare-pytorch` runs it):

    python bench/pytorch_reference.py --model daformer_mitb0 --crop 256 \
        --batch 2 --iters 5 --warmup 2 --threads 2 --json out.json

Measured, as in `src/cli/bench.rs` (median of `--iters` after `--warmup`):
  eval forward    : encoder + head, eval mode, under `torch.no_grad()`;
  train step      : forward, logits bilinearly resized to the crop,
                    cross-entropy (ignore 255), backward, AdamW (head x10 lr,
                    no decay on norms: the DAFormer recipe);
  DACS iteration  : EMA teacher update, student forward on the source, teacher
                    forward on the target (no graph, BatchNorm with batch
                    statistics, no dropout / drop-path), pseudo-labels with the
                    confident-share weight, ClassMix of half the source classes,
                    colour jitter + Gaussian blur, student forward on the mixed
                    batch, one backward of the summed losses, AdamW.
Networks (written here from docs/models.md, no `transformers` needed, so the
script runs in a venv with torch only): MiT `tiny`/`b0`...`b5` with the
SegFormer all-MLP head or the DAFormer head (depthwise-separable ASPP,
dilations 1/6/12/18). The parameter count is printed, to be compared with
omuda's. FLOPs of one eval forward are counted with
`torch.utils.flop_counter.FlopCounterMode` (2 per multiply-add, convolutions
and matrix products only); train step = 3x, DACS iteration = 7x that count,
the convention of omuda's bench.
"""

import argparse
import json
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

MIT = {
    "tiny": dict(hidden=[16, 32, 64, 128], depths=[1, 1, 1, 1], heads=[1, 2, 4, 8], dec=64),
    "b0": dict(hidden=[32, 64, 160, 256], depths=[2, 2, 2, 2], heads=[1, 2, 5, 8], dec=256),
    "b1": dict(hidden=[64, 128, 320, 512], depths=[2, 2, 2, 2], heads=[1, 2, 5, 8], dec=256),
    "b2": dict(hidden=[64, 128, 320, 512], depths=[3, 4, 6, 3], heads=[1, 2, 5, 8], dec=768),
    "b3": dict(hidden=[64, 128, 320, 512], depths=[3, 4, 18, 3], heads=[1, 2, 5, 8], dec=768),
    "b4": dict(hidden=[64, 128, 320, 512], depths=[3, 8, 27, 3], heads=[1, 2, 5, 8], dec=768),
    "b5": dict(hidden=[64, 128, 320, 512], depths=[3, 6, 40, 3], heads=[1, 2, 5, 8], dec=768),
}
SR = [8, 4, 2, 1]
PATCH = [7, 3, 3, 3]
STRIDE = [4, 2, 2, 2]


# ----------------------------------------------------------------------------
# MiT encoder (channels-last tokens, as omuda's nn/mit.rs)


class DropPath(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = (torch.rand(x.shape[0], 1, 1, device=x.device) >= self.p).to(x.dtype)
        return x * keep / (1.0 - self.p)


class PatchEmbed(nn.Module):
    def __init__(self, cin, c, k, s):
        super().__init__()
        self.proj = nn.Conv2d(cin, c, k, s, k // 2)
        self.norm = nn.LayerNorm(c, eps=1e-5)

    def forward(self, x):
        y = self.proj(x)
        _, _, h, w = y.shape
        return self.norm(y.flatten(2).transpose(1, 2)), h, w


class Attention(nn.Module):
    def __init__(self, c, heads, sr):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(c, c)
        self.k = nn.Linear(c, c)
        self.v = nn.Linear(c, c)
        self.proj = nn.Linear(c, c)
        self.sr = nn.Conv2d(c, c, sr, sr) if sr > 1 else None
        self.norm = nn.LayerNorm(c, eps=1e-5) if sr > 1 else None
        self.scale = (c // heads) ** -0.5

    def forward(self, x, h, w):
        b, n, c = x.shape
        kv = x
        if self.sr is not None:
            r = self.sr(x.transpose(1, 2).reshape(b, c, h, w))
            kv = self.norm(r.flatten(2).transpose(1, 2))
        hd = c // self.heads
        q = self.q(x).reshape(b, n, self.heads, hd).transpose(1, 2) * self.scale
        k = self.k(kv).reshape(b, -1, self.heads, hd).transpose(1, 2)
        v = self.v(kv).reshape(b, -1, self.heads, hd).transpose(1, 2)
        a = (q @ k.transpose(2, 3)).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, c))


class MixFfn(nn.Module):
    def __init__(self, c, hidden):
        super().__init__()
        self.fc1 = nn.Linear(c, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.fc2 = nn.Linear(hidden, c)

    def forward(self, x, h, w):
        b, n, _ = x.shape
        y = self.fc1(x)
        y = self.dwconv(y.transpose(1, 2).reshape(b, -1, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(y))


class Block(nn.Module):
    def __init__(self, c, heads, sr, dp):
        super().__init__()
        self.norm1 = nn.LayerNorm(c, eps=1e-6)
        self.attn = Attention(c, heads, sr)
        self.norm2 = nn.LayerNorm(c, eps=1e-6)
        self.mlp = MixFfn(c, 4 * c)
        self.drop_path = DropPath(dp)

    def forward(self, x, h, w):
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class Mit(nn.Module):
    def __init__(self, cfg, drop_path=0.1):
        super().__init__()
        total = sum(cfg["depths"])
        rates = [drop_path * i / max(total - 1, 1) for i in range(total)]
        self.embeds, self.stages, self.norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        cin, j = 3, 0
        for i, c in enumerate(cfg["hidden"]):
            self.embeds.append(PatchEmbed(cin, c, PATCH[i], STRIDE[i]))
            self.stages.append(
                nn.ModuleList(Block(c, cfg["heads"][i], SR[i], rates[j + d]) for d in range(cfg["depths"][i]))
            )
            self.norms.append(nn.LayerNorm(c, eps=1e-6))
            j += cfg["depths"][i]
            cin = c

    def forward(self, x):
        feats = []
        for embed, blocks, norm in zip(self.embeds, self.stages, self.norms):
            t, h, w = embed(x)
            for blk in blocks:
                t = blk(t, h, w)
            x = norm(t).transpose(1, 2).reshape(t.shape[0], -1, h, w)
            feats.append(x)
        return feats


# ----------------------------------------------------------------------------
# Heads (DAFormer head as in tests/fixtures/gen_models.py)


class ConvBnRelu(nn.Module):
    def __init__(self, cin, cout, k, dilation=1, groups=1):
        super().__init__()
        pad = 0 if k == 1 else dilation * (k // 2)
        self.conv = nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class SepConv(nn.Module):
    def __init__(self, cin, cout, dilation):
        super().__init__()
        self.depthwise_conv = ConvBnRelu(cin, cin, 3, dilation=dilation, groups=cin)
        self.pointwise_conv = ConvBnRelu(cin, cout, 1)

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


class Aspp(nn.Module):
    def __init__(self, cin, c, dilations):
        super().__init__()
        self.aspp_modules = nn.ModuleList(ConvBnRelu(cin, c, 1) if d == 1 else SepConv(cin, c, d) for d in dilations)
        self.bottleneck = ConvBnRelu(len(dilations) * c, c, 3)

    def forward(self, x):
        return self.bottleneck(torch.cat([m(x) for m in self.aspp_modules], 1))


class Embed(nn.Module):
    def __init__(self, cin, c):
        super().__init__()
        self.proj = nn.Linear(cin, c)

    def forward(self, x):
        b, _, h, w = x.shape
        return self.proj(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)


class DAFormerHead(nn.Module):
    def __init__(self, in_channels, c, num_classes, dilations=(1, 6, 12, 18)):
        super().__init__()
        self.embed_layers = nn.ModuleList(Embed(ci, c) for ci in in_channels)
        self.fuse_layer = Aspp(len(in_channels) * c, c, dilations)
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(c, num_classes, 1)

    def forward(self, feats):
        size = feats[0].shape[2:]
        emb = []
        for f, layer in zip(feats, self.embed_layers):
            e = layer(f)
            if e.shape[2:] != size:
                e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
            emb.append(e)
        return self.conv_seg(self.dropout(self.fuse_layer(torch.cat(emb, 1))))


class SegformerHead(nn.Module):
    """Hugging Face `SegformerDecodeHead`: concat order [F4, F3, F2, F1]."""

    def __init__(self, in_channels, d, num_classes):
        super().__init__()
        self.linear_c = nn.ModuleList(Embed(ci, d) for ci in in_channels)
        self.linear_fuse = nn.Conv2d(4 * d, d, 1, bias=False)
        self.batch_norm = nn.BatchNorm2d(d)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(d, num_classes, 1)

    def forward(self, feats):
        size = feats[0].shape[2:]
        emb = []
        for f, layer in zip(reversed(feats), reversed(self.linear_c)):
            e = layer(f)
            if e.shape[2:] != size:
                e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
            emb.append(e)
        x = F.relu(self.batch_norm(self.linear_fuse(torch.cat(emb, 1))))
        return self.classifier(self.dropout(x))


class SegModel(nn.Module):
    def __init__(self, name, num_classes):
        super().__init__()
        head, _, enc = name.partition("_")
        key = enc.removeprefix("mit")
        if key not in MIT or head not in ("daformer", "segformer"):
            raise SystemExit(f"pytorch_reference: unsupported model {name!r} (segformer_*/daformer_* with tiny, mitb0..mitb5)")
        cfg = MIT[key]
        self.encoder = Mit(cfg)
        if head == "daformer":
            # DAFormer's head is C = 256 for every MiT (omuda's `daformer_tiny`: 64).
            self.decode_head = DAFormerHead(cfg["hidden"], 64 if key == "tiny" else 256, num_classes)
        else:
            self.decode_head = SegformerHead(cfg["hidden"], cfg["dec"], num_classes)

    def forward(self, x):
        return self.decode_head(self.encoder(x))


def teacher_mode(model):
    """BatchNorm with batch statistics, dropout and drop-path off (omuda's `ForwardCtx::teacher`)."""
    model.train()
    for m in model.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d, DropPath)):
            m.eval()


# ----------------------------------------------------------------------------
# The step


def make_optimizer(model, lr=6e-5):
    groups = {"head": [], "norm": [], "rest": []}
    for name, p in model.named_parameters():
        if "head" in name:
            groups["head"].append(p)
        elif "norm" in name or ".bn." in name:
            groups["norm"].append(p)
        else:
            groups["rest"].append(p)
    return torch.optim.AdamW(
        [
            {"params": groups["head"], "lr": 10 * lr},
            {"params": groups["norm"], "weight_decay": 0.0},
            {"params": groups["rest"]},
        ],
        lr=lr,
        weight_decay=0.01,
    )


def seg_loss(model, image, label, weight=None):
    logits = F.interpolate(model(image), size=label.shape[1:], mode="bilinear", align_corners=False)
    if weight is None:
        return F.cross_entropy(logits, label, ignore_index=255)
    per_pixel = F.cross_entropy(logits, label, ignore_index=255, reduction="none")
    return (per_pixel * weight).mean()


def strong_augment(img, gen):
    """Colour jitter (brightness, contrast, saturation) and a 3-tap Gaussian blur per image."""
    b = img.shape[0]
    br = 1 + 0.2 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    img = img * br
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    img = (img - mean) * (1 + 0.2 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)) + mean
    grey = img.mean(dim=1, keepdim=True)
    img = (img - grey) * (1 + 0.2 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)) + grey
    sigma = 0.15 + 1.0 * torch.rand(1, generator=gen).item()
    k = torch.tensor([math.exp(-1 / (2 * sigma**2)), 1.0, math.exp(-1 / (2 * sigma**2))])
    k = k / k.sum()
    c = img.shape[1]
    img = F.conv2d(F.pad(img, (1, 1, 0, 0), mode="reflect"), k.view(1, 1, 1, 3).repeat(c, 1, 1, 1), groups=c)
    img = F.conv2d(F.pad(img, (0, 0, 1, 1), mode="reflect"), k.view(1, 1, 3, 1).repeat(c, 1, 1, 1), groups=c)
    return img


class Dacs:
    def __init__(self, student, teacher, opt, threshold=0.968, alpha=0.99):
        self.student, self.teacher, self.opt = student, teacher, opt
        self.threshold, self.alpha, self.iter = threshold, alpha, 0
        self.gen = torch.Generator().manual_seed(0)
        self.s_params = list(student.parameters())
        self.t_params = list(teacher.parameters())
        for p in self.t_params:
            p.requires_grad_(False)

    def step(self, xs, ys, xt):
        with torch.no_grad():
            if self.iter == 0:
                torch._foreach_copy_(self.t_params, self.s_params)
            else:
                a = min(1 - 1 / (self.iter + 1), self.alpha)
                torch._foreach_lerp_(self.t_params, self.s_params, 1 - a)
        self.iter += 1
        self.student.train()
        loss_src = seg_loss(self.student, xs, ys)
        with torch.no_grad():
            teacher_mode(self.teacher)
            probs = F.interpolate(self.teacher(xt), size=ys.shape[1:], mode="bilinear", align_corners=False).softmax(1)
            conf, pl = probs.max(1)
            share = (conf >= self.threshold).float().mean(dim=(1, 2), keepdim=True)
            pw = share.expand_as(conf).clone()
            masks = []
            for i in range(xs.shape[0]):
                classes = torch.unique(ys[i])
                classes = classes[classes != 255]
                pick = classes[torch.randperm(len(classes), generator=self.gen)[: (len(classes) + 1) // 2]]
                masks.append(torch.isin(ys[i], pick))
            m = torch.stack(masks).unsqueeze(1)
            x_mix = strong_augment(torch.where(m, xs, xt), self.gen)
            y_mix = torch.where(m[:, 0], ys, pl)
            w_mix = torch.where(m[:, 0], torch.ones_like(pw), pw)
        loss_mix = seg_loss(self.student, x_mix, y_mix, w_mix)
        self.opt.zero_grad(set_to_none=True)
        (loss_src + loss_mix).backward()
        self.opt.step()


def supervised_step(model, opt, xs, ys):
    model.train()
    loss = seg_loss(model, xs, ys)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def median_time(warmup, iters, fn):
    """Median wall time and median process CPU time (all threads) of `fn`."""
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(times), statistics.median(cpu)


def count_forward_flops(model, x):
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def peak_rss_mib():
    """Peak resident memory of this process (Linux VmHWM), MiB. Not
    `ru_maxrss`: Linux carries it over `execve`, so a child of `omuda bench`
    would report omuda's own peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def parse_crop(text):
    parts = text.lower().split("x")
    nums = [int(p) for p in parts]
    return (nums[0], nums[0]) if len(nums) == 1 else (nums[0], nums[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="daformer_mitb0")
    ap.add_argument("--crop", default="256")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--no-uda", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = parse_crop(args.crop)
    b, k = args.batch, args.classes
    xs = torch.randn(b, 3, h, w)
    xt = torch.randn(b, 3, h, w)
    # Labels in blocks of 32 px, as omuda's bench.
    blocks = torch.randint(0, k, (b, 1, -(-h // 32), -(-w // 32))).float()
    ys = F.interpolate(blocks, scale_factor=32, mode="nearest")[:, 0, :h, :w].long()

    model = SegModel(args.model, k)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"pytorch: {args.model} ({params} parameters), {h}x{w}, batch {b}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        file=sys.stderr,
    )
    fwd_flops = count_forward_flops(model, xs)

    def eval_forward():
        model.eval()
        with torch.no_grad():
            model(xs)

    eval_s, eval_cpu = median_time(args.warmup, args.iters, eval_forward)
    opt = make_optimizer(model)
    train_s, train_cpu = median_time(args.warmup, args.iters, lambda: supervised_step(model, opt, xs, ys))
    uda_s = uda_cpu = None
    if not args.no_uda:
        student = SegModel(args.model, k)
        teacher = SegModel(args.model, k)
        dacs = Dacs(student, teacher, make_optimizer(student))
        uda_s, uda_cpu = median_time(args.warmup, args.iters, lambda: dacs.step(xs, ys, xt))
    peak = peak_rss_mib()

    flops = {"eval_forward": fwd_flops, "train_step": 3 * fwd_flops, "uda_iteration": 7 * fwd_flops}
    report = {
        "framework": f"pytorch {torch.__version__}",
        "model": args.model,
        "crop": [h, w],
        "batch": b,
        "iters": args.iters,
        "threads": torch.get_num_threads(),
        "parameters": params,
        "eval_forward_s": eval_s,
        "train_step_s": train_s,
        "uda_iteration_s": uda_s,
        "peak_rss_mib": peak,
        "cpu_s": {"eval_forward": eval_cpu, "train_step": train_cpu, "uda_iteration": uda_cpu},
        "flops": flops,
    }
    print("| measurement | median s | GFLOP | GFLOP/s |")
    print("|---|---|---|---|")
    for label, key, t in (
        ("eval forward", "eval_forward", eval_s),
        ("supervised train step", "train_step", train_s),
        ("DACS iteration", "uda_iteration", uda_s),
    ):
        if t is not None:
            g = flops[key] / 1e9
            print(f"| {label} | {t:.4f} | {g:.2f} | {g / t:.1f} |")
    print("CPU time (user + system, median), s:")
    for label, t in (("eval forward", eval_cpu), ("supervised train step", train_cpu), ("DACS iteration", uda_cpu)):
        if t is not None:
            print(f"| {label} | {t:.3f} |")
    print(f"peak RSS: {peak:.0f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
