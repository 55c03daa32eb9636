"""One matrix per layer for q/k/v and one for gate/up, without copying weights: the projections' weights
become row views of a single concatenated matrix, so the frame runs 2 matrix products where it ran 5.

The modules keep their parameters (same names, shapes and values; `state_dict` and `load_state_dict` work
as before); only the storage moves. Call it once per model, before capturing graphs: graphs captured
earlier point at the old storage, which is freed.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.talker import Talker


def share_one_matrix(*linears: nn.Linear) -> torch.Tensor:
    """Concatenate the weights of `linears` (bias-free) along the output rows and make each weight a view of
    its rows. Returns the concatenated matrix."""
    fused = torch.cat([linear.weight.detach() for linear in linears])
    row = 0
    for linear in linears:
        rows = linear.weight.shape[0]
        linear.weight = nn.Parameter(fused[row: row + rows], requires_grad=linear.weight.requires_grad)
        row += rows
    return fused


def fuse_projections(talker: Talker) -> dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """{decoder layer: (qkv weight, gate_up weight)} for every talker and code-predictor layer."""
    fused = {}
    for stack in (talker.model, talker.code_predictor.model):
        for layer in stack.layers:
            attn, mlp = layer.self_attn, layer.mlp
            fused[layer] = (share_one_matrix(attn.q_proj, attn.k_proj, attn.v_proj),
                            share_one_matrix(mlp.gate_proj, mlp.up_proj))
    return fused
