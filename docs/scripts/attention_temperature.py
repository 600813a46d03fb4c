"""Write AnyUp weights whose attention logits are scaled by T (the model card's temperature ablation).

The logits are ``q . k / sqrt(d)`` with ``q`` the query projection's output (RoPE, a rotation,
commutes with the scale), so multiplying the query rows of ``in_proj_weight`` and ``in_proj_bias``
by ``T`` gives ``softmax(T * logits)`` over the same window: ``T < 1`` softer, ``T > 1`` sharper,
``T = 0`` every window cell weighted alike (a box filter of the window, no image guidance).

    python docs/scripts/attention_temperature.py anyup_offline 0.7 runs/issue14/temperature/t0.7.safetensors
"""

import argparse

import torch

import anyup
from anyup.model import ARCH_FIELDS
from anyup.train.checkpoint import export_safetensors


def scale_logits_(model: anyup.AnyUp, temperature: float) -> anyup.AnyUp:
    """Multiply ``model``'s attention logits by ``temperature`` (its query rows, in place); returns it."""
    attn = model.cross_decode.cross_attn.attention
    d = model.config.dim
    with torch.no_grad():
        attn.in_proj_weight[:d] *= temperature  # query rows
        attn.in_proj_bias[:d] *= temperature
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", help="registered name or file")
    ap.add_argument("temperature", type=float, help="logit scale T >= 0")
    ap.add_argument("out", help="safetensors file to write")
    args = ap.parse_args()
    if not args.temperature >= 0:
        raise SystemExit(f"temperature must be >= 0, got {args.temperature}")
    model = scale_logits_(anyup.load(args.weights), args.temperature)
    arch = {k: v for k, v in model.config.to_dict().items() if k in ARCH_FIELDS}
    note = f"{args.weights} with the attention logits scaled by {args.temperature} (an ablation, not for use)"
    export_safetensors(model, args.out, {"format": "anyup", "anyup_config": arch, "note": note})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
