"""LRP on the digits CNN beside Captum's LRP and one gradient x input.

Relevance of the true class for the 397 test digits, with the default composite (zᴮ at
the input, γ for the convolutions, ε for the dense layers) and, for the comparison with
Captum on the same rules, γ for the convolutions and ε for the dense layers everywhere
(Captum has no zᴮ). The floor of any one-pass LRP with γ convolutions is timed too: one
gradient x input plus the second forward product of each convolution. Captum needs its
own layer types and no Flatten module, so it runs on an equal copy of the network (plain
Conv2d and MaxPool2d, a reshape in forward). One thread, CPU time per call, rotating
rounds, ratios paired within each round:

    python benchmarks/lrp.py [--rounds 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch
from captum.attr import LRP
from captum.attr._utils.lrp_rules import EpsilonRule, GammaRule
from torch import nn

from timing import paired_ratio, timed_rounds
from vulnscope.data import load_digits
from vulnscope.explain.lrp import lrp
from vulnscope.models import pretrained

SAME_RULES = {nn.Conv2d: "gamma", nn.Linear: "epsilon"}


class _CaptumCNN(nn.Module):
    """The digits CNN with Captum's supported layer types (same weights, same function)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, model.conv1.out_channels, 3, padding=1)
        self.conv1.load_state_dict(model.conv1.state_dict())
        self.conv2, self.fc, self.logits = (
            copy.deepcopy(m) for m in (model.conv2, model.fc, model.logits)
        )
        self.pool, self.relu1, self.relu2, self.relu3 = (
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.ReLU(),
            nn.ReLU(),
        )
        for layer in (self.conv1, self.conv2):
            layer.rule = GammaRule(0.25)
        for layer in (self.fc, self.logits):
            layer.rule = EpsilonRule(1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu2(self.pool(self.conv2(self.relu1(self.conv1(x)))))
        return self.logits(self.relu3(self.fc(h.reshape(h.shape[0], -1))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require")
    model = pretrained("digits-cnn")
    # A fair floor: gradient x input computes no weight gradient, as LRP computes none.
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    data = load_digits("test")
    x, y = data.x, data.y
    captum_model = _CaptumCNN(model).eval()

    def gradient_times_input() -> torch.Tensor:
        inputs = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(model(inputs).gather(1, y[:, None]).sum(), inputs)
        return grad * x

    def one_pass_floor() -> torch.Tensor:
        # What any one-pass γ-conv LRP must do: the gradient, plus the second (modified)
        # forward product of each convolution; the elementwise work of the rule is left out.
        with torch.no_grad():
            model.conv2(torch.relu(model.conv1(x)))
        return gradient_times_input()

    contenders = {
        "vulnscope lrp (default composite)": lambda: lrp(model, x, y),
        "vulnscope lrp (γ conv, ε dense)": lambda: lrp(model, x, y, rules=SAME_RULES),
        "captum LRP (γ conv, ε dense)": lambda: LRP(captum_model).attribute(x, target=y),
        "gradient x input": gradient_times_input,
        "floor: gradient x input + conv forwards": one_pass_floor,
    }
    # Captum's γ leaves the bias as it is (ours adds γ b⁺, as Montavon et al.): the
    # relevance maps are compared under ε everywhere, where both conventions agree.
    epsilon_model = _CaptumCNN(model).eval()
    for layer in (epsilon_model.conv1, epsilon_model.conv2):
        layer.rule = EpsilonRule(1e-6)
    reference = LRP(epsilon_model).attribute(x, target=y).detach()
    gap = (lrp(model, x, y, rules="epsilon") - reference).abs()
    print(f"{x.shape[0]} digits, {args.threads} thread(s), {args.rounds} rounds, CPU time")
    print(f"max |vulnscope - captum| under ε everywhere: {float(gap.max()):.2e}")
    times = timed_rounds(contenders, args.rounds, clock=time.process_time)
    for name, values in times.items():
        print(f"  {name:40s} median {sorted(values)[len(values) // 2] * 1e3:7.2f} ms")
    pairs = [
        ("vulnscope lrp (default composite)", "captum LRP (γ conv, ε dense)"),
        ("vulnscope lrp (γ conv, ε dense)", "captum LRP (γ conv, ε dense)"),
        ("vulnscope lrp (default composite)", "gradient x input"),
        ("vulnscope lrp (γ conv, ε dense)", "gradient x input"),
        ("floor: gradient x input + conv forwards", "gradient x input"),
        ("vulnscope lrp (γ conv, ε dense)", "floor: gradient x input + conv forwards"),
    ]
    for numerator, denominator in pairs:
        ratio = paired_ratio(times, numerator, denominator)
        print(f"  {numerator} / {denominator}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
