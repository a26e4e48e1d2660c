"""Key layouts of VAE weights: ours (= diffusers), the original LDM/CompVis single file, and old diffusers names.

LDM layout (what ComfyUI's models/vae and full SD checkpoints under `first_stage_model.` hold):
    {encoder,decoder}.conv_in / conv_out / norm_out
    {encoder,decoder}.mid.block_{1,2}.{norm1,conv1,norm2,conv2,nin_shortcut}
    {encoder,decoder}.mid.attn_1.{norm,q,k,v,proj_out}     q/k/v/proj_out are 1x1 convs [C, C, 1, 1]
    encoder.down.{i}.block.{j}.*, encoder.down.{i}.downsample.conv
    decoder.up.{i}.block.{j}.*,   decoder.up.{i}.upsample.conv   (i counts from the FULL resolution up, so
                                                                   decoder.up.{i} = up_blocks.{levels-1-i})
    quant_conv, post_quant_conv
Ours / diffusers: `down_blocks.{i}.resnets.{j}`, `downsamplers.0.conv`, `mid_block.resnets.{0,1}`,
`mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}` (Linear [C, C]), `conv_norm_out`, `conv_shortcut`.
Old diffusers (< 0.14) named the attention projections `query`, `key`, `value`, `proj_attn`.
"""

from __future__ import annotations

import re

import torch

_BLOCK_RULES: list[tuple[str, object]] = [
    (r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."),
    (r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
    (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.mid.attn_1."),
    (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2."),
    (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
]
_RESNET_LEAVES = {"conv_shortcut": "nin_shortcut"}
_ATTENTION_LEAVES_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_ATTENTION_LEAVES_LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
_ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def ldm_key(key: str, num_levels: int) -> str:
    """Our (diffusers) parameter name -> the LDM single-file name."""
    for pattern, replacement in _BLOCK_RULES:
        key = re.sub(pattern, replacement, key)
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                 lambda m: f"decoder.up.{num_levels - 1 - int(m[1])}.block.{m[2]}.", key)
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                 lambda m: f"decoder.up.{num_levels - 1 - int(m[1])}.upsample.", key)
    if ".mid.attn_1." in key:
        head, leaf = key.split(".mid.attn_1.")
        name, param = leaf.rsplit(".", 1)
        return f"{head}.mid.attn_1.{_ATTENTION_LEAVES_LDM.get(name, name)}.{param}"
    *head, name, param = key.split(".")
    return ".".join([*head, _RESNET_LEAVES.get(name, name), param])


def legacy_diffusers_key(key: str) -> str:
    """Our attention projection name -> the pre-0.14 diffusers name (query/key/value/proj_attn); others unchanged."""
    match = re.fullmatch(r"(.*\.attentions\.0)\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)", key)
    if match is None:
        return key
    return f"{match[1]}.{_ATTENTION_LEAVES_LEGACY[match[2]]}.{match[3]}"


def is_attention_projection(key: str) -> bool:
    """Whether `key` (our naming) is a q/k/v/out projection weight (Linear here, 1x1 conv in LDM files)."""
    return ".attentions." in key and key.endswith(".weight") and any(f".{p}." in key for p in _ATTENTION_PROJECTIONS)


def to_ldm_state_dict(state_dict: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    """Our state dict -> LDM names, attention projections reshaped to 1x1 conv weights [C, C, 1, 1]."""
    out = {}
    for key, tensor in state_dict.items():
        if is_attention_projection(key):
            tensor = tensor.reshape(*tensor.shape, 1, 1)  # [C, C, 1, 1]
        out[ldm_key(key, num_levels)] = tensor
    return out


def to_legacy_diffusers_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> pre-0.14 diffusers names (for writing test files in that layout)."""
    return {legacy_diffusers_key(key): tensor for key, tensor in state_dict.items()}
