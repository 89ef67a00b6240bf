"""Corpus functions of neural-network code: flax-style layers with parameter dicts, optax-style losses.

Written the way such code is: batched 3-D activations (batch, time, features), 4-D attention
heads, convolutions through ``lax.conv_general_dilated`` and pooling through
``lax.reduce_window``, parameters as dicts (pytrees) differentiated as one argument.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_RNG = np.random.default_rng(12)


def _normal(*shape, dtype=np.float32, scale=0.5):
    return (scale * _RNG.normal(size=shape)).astype(dtype)


# ---- flax-style modules ------------------------------------------------------------------------


def dense_gelu(params, x):
    """A flax Dense layer with a GELU on a (batch, time, features) input: params {'kernel', 'bias'}."""
    return jax.nn.gelu(jnp.einsum("btf,fo->bto", x, params["kernel"]) + params["bias"])


def mlp_classifier(params, x):
    """A three-layer MLP (relu, silu) over a list of {'w', 'b'} dicts, returning log-probabilities."""
    h = x
    for i, layer in enumerate(params["layers"]):
        h = h @ layer["w"] + layer["b"]
        if i < len(params["layers"]) - 1:
            h = jax.nn.relu(h) if i == 0 else jax.nn.silu(h)
    return jax.nn.log_softmax(h, axis=-1)


def layer_norm(x, scale, bias):
    """flax LayerNorm over the feature axis of a (batch, time, features) array, with scale and bias."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-6) * scale + bias


def causal_self_attention(params, x):
    """Multi-head causal self-attention (flax MultiHeadDotProductAttention-style): (b, t, h, d) heads."""
    q = jnp.einsum("btf,fhd->bthd", x, params["query"])
    k = jnp.einsum("btf,fhd->bthd", x, params["key"])
    v = jnp.einsum("btf,fhd->bthd", x, params["value"])
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1]).astype(x.dtype)
    t = x.shape[1]
    mask = jnp.tril(jnp.ones((t, t), bool))
    logits = jnp.where(mask, logits, jnp.finfo(x.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    return x + jnp.einsum("bqhd,hdf->bqf", out, params["out"])


def fused_attention(q, k, v):
    """jax.nn.dot_product_attention (causal) on float64 (batch, time, heads, dim) arrays: its softmax runs in float32."""
    return jax.nn.dot_product_attention(q, k, v, is_causal=True)


@jax.custom_vjp
def _clip_gradient(x):
    """The identity whose backward pass clips the cotangent to [-0.1, 0.1] (a custom_vjp rule)."""
    return x


_clip_gradient.defvjp(lambda x: (x, None), lambda _, g: (jnp.clip(g, -0.1, 0.1),))


def clipped_gradient_layer(w, x):
    """A tanh layer whose pre-activations clip their gradient (jax.custom_vjp): jax.jacrev follows the rule."""
    return jnp.tanh(_clip_gradient(x @ w))


@jax.custom_vjp
def _quantize(x):
    """Rounding to a 1/8 grid whose backward pass is the straight-through identity (a linear custom_vjp rule)."""
    return jnp.round(x * 8.0) / 8.0


_quantize.defvjp(lambda x: (_quantize(x), None), lambda _, g: (g,))


def quantized_dense(w, x):
    """Quantization-aware training: a dense layer on straight-through quantized weights (jax.custom_vjp)."""
    return jax.nn.relu(x @ _quantize(w))


def conv1d_block(x, kernel, bias):
    """A 1-D convolution layer (flax Conv, NWC layout, SAME padding, dilation 2) plus bias and swish."""
    y = jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1,), padding="SAME", rhs_dilation=(2,),
        dimension_numbers=("NWC", "WIO", "NWC"),
    )
    return jax.nn.swish(y + bias)


def cnn_pool(params, images):
    """A small CNN: strided 2-D convolution (NHWC), relu, max-pool and average-pool (lax.reduce_window), dense head."""
    y = jax.lax.conv_general_dilated(
        images, params["conv"], window_strides=(1, 1), padding=((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    y = jax.nn.relu(y + params["conv_bias"])
    y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 1, 1, 1), "VALID")
    y = jax.lax.reduce_window(y, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0
    return y.reshape(y.shape[0], -1) @ params["head"]


def embed_and_pool(table, tokens, positions):
    """A transformer input: token embeddings (jnp.take) plus learned positions, masked mean pooling."""
    h = jnp.take(table, tokens, axis=0) + positions[None, : tokens.shape[1]]
    mask = (tokens > 0)[..., None]
    return jnp.sum(jnp.where(mask, h, 0.0), axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1)


# ---- optax-style losses ------------------------------------------------------------------------


def softmax_cross_entropy(logits, labels):
    """optax.softmax_cross_entropy_with_integer_labels with label smoothing 0.1 (one-hot labels)."""
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    targets = targets * 0.9 + 0.1 / logits.shape[-1]
    return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def sigmoid_focal_loss(logits, labels):
    """optax.sigmoid_focal_loss (gamma 2) averaged per example: log_sigmoid, sigmoid, integer powers."""
    p = jax.nn.sigmoid(logits)
    ce = -(labels * jax.nn.log_sigmoid(logits) + (1 - labels) * jax.nn.log_sigmoid(-logits))
    p_t = p * labels + (1 - p) * (1 - labels)
    return jnp.mean(ce * (1 - p_t) ** 2, axis=-1)


def huber_regression(params, x, y):
    """A linear model's optax.huber_loss (delta 1, jnp.where branches) plus L2 weight decay over the params pytree."""
    pred = x @ params["w"] + params["b"]
    err = jnp.abs(pred - y)
    loss = jnp.where(err < 1.0, 0.5 * err**2, err - 0.5)
    decay = sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(params))
    return jnp.mean(loss) + 1e-2 * decay


def contrastive_cosine(a, b, temperature):
    """A CLIP-style contrastive loss: cosine similarities (optax.cosine_similarity, eps-clipped norms), both directions."""
    a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-8)
    b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-8)
    logits = a @ b.T / temperature
    labels = jnp.arange(a.shape[0])
    loss_a = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), labels[:, None], axis=1)
    loss_b = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0), labels[None, :], axis=0)
    return jnp.mean(loss_a) + jnp.mean(loss_b)


def entries() -> list[tuple]:
    """(group, function, example arguments, argnums) for every function of this module."""
    mlp = {"layers": [
        {"w": _normal(4, 5), "b": _normal(5)},
        {"w": _normal(5, 5), "b": _normal(5)},
        {"w": _normal(5, 3), "b": _normal(3)},
    ]}
    attention = {name: _normal(4, 2, 2) for name in ("query", "key", "value")}
    attention["out"] = _normal(2, 2, 4)
    cnn = {"conv": _normal(3, 3, 1, 2), "conv_bias": _normal(2), "head": _normal(8, 3)}
    tokens = np.array([[3, 1, 0], [2, 2, 4]], np.int32)
    return [
        ("layers", dense_gelu, ({"kernel": _normal(3, 4), "bias": _normal(4)}, _normal(2, 3, 3)), (0, 1)),
        ("layers", mlp_classifier, (mlp, _normal(2, 4)), 0),
        ("layers", layer_norm, (_normal(2, 3, 4), 1.0 + _normal(4), _normal(4)), (0, 1, 2)),
        ("layers", causal_self_attention, (attention, _normal(2, 3, 4)), (0, 1)),
        ("layers", fused_attention, tuple(_normal(1, 3, 2, 2, dtype=np.float64) for _ in range(3)), (0, 1, 2)),
        ("layers", clipped_gradient_layer, (_normal(3, 2), _normal(2, 3)), (0, 1)),
        ("layers", quantized_dense, (_normal(3, 2), _normal(2, 3)), (0, 1)),
        ("layers", conv1d_block, (_normal(2, 6, 2), _normal(3, 2, 3), _normal(3)), (0, 1, 2)),
        ("layers", cnn_pool, (cnn, _normal(2, 5, 5, 1)), (0, 1)),
        ("layers", embed_and_pool, (_normal(5, 3), tokens, _normal(4, 3)), (0, 2)),
        ("losses", softmax_cross_entropy, (_normal(4, 5, scale=1.0), np.array([0, 3, 1, 4], np.int32)), 0),
        ("losses", sigmoid_focal_loss, (_normal(3, 4, scale=1.0), (_RNG.uniform(size=(3, 4)) > 0.5).astype(np.float32)), 0),
        ("losses", huber_regression, ({"w": _normal(3, 2, dtype=np.float64), "b": _normal(2, dtype=np.float64)},
                            _normal(5, 3, dtype=np.float64, scale=1.0), _normal(5, 2, dtype=np.float64, scale=2.0)),
         (0, 1)),
        ("losses", contrastive_cosine, (_normal(3, 4, dtype=np.float64), _normal(3, 4, dtype=np.float64),
                              np.float64(0.5)), (0, 1, 2)),
    ]
