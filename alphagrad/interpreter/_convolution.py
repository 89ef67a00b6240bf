"""The labelled partials of a convolution, gathered from its operands at the cost of their size.

``lax.conv_general_dilated(lhs, rhs)`` is linear in each operand, and its partials are entries of
the other operand put in place (`graph._rules.labelled_structure` names their ties):

- by the kernel: output feature o reads kernel slice o only, a tie between the output's feature
  axis and the kernel's output-feature axis, whose values are the input's patches
  ``[batch, out spatial..., window..., in features]``, the same for every o ("K") or, with feature
  groups, each o's group's input features ("D");
- by the input: every example alike (a "K" tie on the batch), whose values are the kernel as a map
  ``[out spatial and features, in spatial and features]``, zero where no window tap meets.

Both are built at the value's own size, multiplying nothing (the patches by one gather of the
padded, dilated input; the kernel's map by padding and reshaping its taps into shifted rows; a
depthwise convolution's input partial also ties the two feature axes, "D", one map per feature).
The generic evaluation
(`_labelled.labelled_partial`) ran one JVP per entry of the operand's untied axes: per kernel entry
a full convolution, Cout times the patches' size each; per input entry (ones along the batch) a
convolution of the whole batch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad.graph import AxisTies, labelled_structure

__all__ = ["convolution_values"]

DENSE = 1


def convolution_values(params: dict, lhs: Any, rhs: Any, position: int, ties: AxisTies, out_shape,
                       out_dims, in_dims, dtype) -> jax.Array | None:
    """The value array of d conv / d operand `position` laid out as `ties` says, or None where
    `ties` is not the rule's structure (the caller then evaluates it generically)."""
    lhs_shape, rhs_shape, out_shape = tuple(np.shape(lhs)), tuple(np.shape(rhs)), tuple(out_shape)
    rule = labelled_structure("conv_general_dilated", params, [lhs_shape, rhs_shape], out_shape, in_dims,
                              out_dims, position, DENSE)
    if rule != ties or not ties.has_values:
        return None
    groups = params.get("feature_group_count", 1)
    if position == 1:
        kind = "K" if groups == 1 else "D"
        values = _kernel_values(params, jnp.asarray(lhs, dtype), rhs_shape, groups, kind)
    else:
        lhs_spec = params["dimension_numbers"][0]
        if any(kind == "D" for _, _, kind in ties.ties):
            # Depthwise: feature c of the output reads feature c of the input alone (a "D" tie),
            # each feature's taps as a one-feature convolution's map.
            lhs_shape = tuple(1 if d == lhs_spec[1] else n for d, n in enumerate(lhs_shape))
            groups = 1
        values = _input_values(params, jnp.asarray(rhs, dtype), lhs_shape, out_shape, groups)
    value_shape = tuple((out_dims if side == "out" else in_dims)[k] for side, k in ties.value_axes)
    return values.reshape(value_shape)


def _kernel_values(params, lhs, rhs_shape, groups: int, kind: str) -> jax.Array:
    """The input's patches, [out axes (the feature axis only for "D")..., kernel axes but its
    output features...] in the two arrays' own axis orders."""
    lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
    k = len(lhs_spec) - 2
    strides, padding = params["window_strides"], params["padding"]
    lhs_dilation = params.get("lhs_dilation") or (1,) * k
    rhs_dilation = params.get("rhs_dilation") or (1,) * k
    window = [rhs_shape[rhs_spec[2 + i]] for i in range(k)]
    x = jnp.transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))  # [n, spatial..., c]
    x = jax.lax.pad(x, jnp.zeros((), x.dtype),
                    [(0, 0, 0)] + [(lo, hi, d - 1) for (lo, hi), d in zip(padding, lhs_dilation)] + [(0, 0, 0)])
    outs = []
    for i in range(k):
        span = x.shape[1 + i] - (window[i] - 1) * rhs_dilation[i]
        outs.append(0 if span <= 0 else (span - 1) // strides[i] + 1)
    index = []
    for i in range(k):  # [Y_i, A_i] at positions i and k + i of [Y..., A...]
        taps = np.arange(outs[i])[:, None] * strides[i] + np.arange(window[i])[None, :] * rhs_dilation[i]
        shape = [1] * (2 * k)
        shape[i], shape[k + i] = outs[i], window[i]
        index.append(taps.reshape(shape))
    patches = x[(slice(None), *index, slice(None))]  # [n, Y..., A..., c]
    labels = ["n", *(("y", i) for i in range(k)), *(("a", i) for i in range(k)), "c"]
    if kind == "D":  # each output feature reads its group's input features
        cout = rhs_shape[rhs_spec[0]]
        per_group, cg = cout // groups, rhs_shape[rhs_spec[1]]
        features = (np.arange(cout)[:, None] // per_group) * cg + np.arange(cg)[None, :]
        patches = jnp.take(patches, jnp.asarray(features), axis=-1)  # [..., o, c]
        labels = labels[:-1] + ["o", "c"]
    out_label = {out_spec[0]: "n", out_spec[1]: "o", **{out_spec[2 + i]: ("y", i) for i in range(k)}}
    rhs_label = {rhs_spec[0]: None, rhs_spec[1]: "c", **{rhs_spec[2 + i]: ("a", i) for i in range(k)}}
    target = [out_label[d] for d in range(k + 2) if kind == "D" or out_label[d] != "o"]
    target += [rhs_label[d] for d in range(k + 2) if rhs_label[d] is not None]
    return jnp.transpose(patches, [labels.index(label) for label in target])


def _input_values(params, rhs, lhs_shape, out_shape, groups: int) -> jax.Array:
    """The kernel as the map of one example, [out axes but the batch..., lhs axes but the batch...]
    in the two arrays' own axis orders: entry (z, o, y, c) is the kernel's tap joining output
    position z to input position y (at most one per spatial axis), for input feature c of o's
    group; zero where there is none.

    Built by padding and reshaping only (the Toeplitz trick: a row of taps padded to the padded
    input's length plus the stride, flattened and cut into rows of that length, shifts row z by z
    times the stride); a gather of the same entries ran 6 ms for 2M entries on the CPU."""
    lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
    k = len(lhs_spec) - 2
    strides, padding = params["window_strides"], params["padding"]
    lhs_dilation = params.get("lhs_dilation") or (1,) * k
    rhs_dilation = params.get("rhs_dilation") or (1,) * k
    kernel = jnp.transpose(rhs, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0]))  # [A..., cg, o]
    cg, cout = kernel.shape[k], kernel.shape[k + 1]
    cin = lhs_shape[lhs_spec[1]]
    zero = jnp.zeros((), kernel.dtype)
    if groups != 1:  # [A..., cin, o], zero where c is not in o's group
        per_group = cout // groups
        kernel = kernel.reshape(*kernel.shape[:k], 1, cg, groups, per_group)
        same = np.eye(groups, dtype=bool)[:, None, :, None]
        kernel = jnp.where(same, kernel, zero).reshape(*kernel.shape[:k], cin, cout)
    x = kernel
    for i in range(k):  # x: [A_i..., c, o, (z, y) of the axes done]
        z_size, y_size = out_shape[out_spec[2 + i]], lhs_shape[lhs_spec[2 + i]]
        lo, hi = padding[i]
        padded = (y_size - 1) * lhs_dilation[i] + 1 + lo + hi  # the padded input's length
        x = jnp.moveaxis(x, 0, -1)
        x = jax.lax.pad(x, zero, [(0, 0, 0)] * (x.ndim - 1) + [(0, 0, rhs_dilation[i] - 1)])  # taps in place
        taps = x.shape[-1]
        lead = x.shape[:-1]
        x = jnp.broadcast_to(x[..., None, :], (*lead, z_size, taps))
        width = padded + strides[i]
        x = jax.lax.pad(x, zero, [(0, 0, 0)] * (x.ndim - 1) + [(0, width - taps, 0)])
        x = x.reshape(*lead, z_size * width)[..., : z_size * padded].reshape(*lead, z_size, padded)
        # Padded position j is input position y where j = lo + y * lhs_dilation.
        left, right = max(0, -lo), max(0, -hi)
        if left or right:
            x = jax.lax.pad(x, zero, [(0, 0, 0)] * (x.ndim - 1) + [(left, right, 0)])
        start = lo + left
        x = jax.lax.slice_in_dim(x, start, start + (y_size - 1) * lhs_dilation[i] + 1, lhs_dilation[i], axis=-1)
    # x: [c, o, z_1, y_1, ..., z_k, y_k]
    labels = ["c", "o"] + [label for i in range(k) for label in (("z", i), ("y", i))]
    out_label = {out_spec[1]: "o", **{out_spec[2 + i]: ("z", i) for i in range(k)}}
    lhs_label = {lhs_spec[1]: "c", **{lhs_spec[2 + i]: ("y", i) for i in range(k)}}
    target = [out_label[d] for d in range(k + 2) if d != out_spec[0]]
    target += [lhs_label[d] for d in range(k + 2) if d != lhs_spec[0]]
    return jnp.transpose(x, [labels.index(label) for label in target])
