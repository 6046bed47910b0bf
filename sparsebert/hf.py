"""Hugging Face transformers integration: sparsebert's attention as an attention implementation,
and an unpadded encoder for BERT-family models.

Importing this module registers the attention function under the name ``"sparsebert"`` with
``transformers.AttentionInterface`` (and the boolean mask builder it needs with
``AttentionMaskInterface``), so that any BERT-family model can use it without patching classes::

    import sparsebert.hf
    model.set_attn_implementation("sparsebert")      # or from_pretrained(..., attn_implementation="sparsebert")

    sparsebert.use_unpadded(model)                   # padding removed once, every layer on packed tokens
    sparsebert.use_unpadded(model, enabled=False)    # back to the padded path

Inference and training. With gradients off (``torch.inference_mode()`` / ``torch.no_grad()``) and
no attention dropout (``model.eval()``), attention runs the C++ kernels ``sparsebert.ops.attention``
and ``attention_varlen``. When gradients are needed (grad mode on and query, key or value
requires grad) or attention dropout is active (``model.train()`` with
``attention_probs_dropout_prob > 0``), it runs the ops' pure-torch references
(``attention_reference``, ``attention_varlen_reference``) with that dropout, which autograd
differentiates: fine-tuning, ``gradient_checkpointing_enable()`` and Monte-Carlo dropout work, on
the padded and the unpadded encoder alike, at the speed of eager attention. So run inference under
``torch.inference_mode()`` (as transformers' pipelines do) to get the kernels: a plain eval forward
with grad mode on computes the same numbers through the references.

Attention weights are never materialized: ``output_attentions=True`` raises ``ValueError``
(transformers' ``"sdpa"`` logs a warning and returns no weights; its config refuses
``output_attentions`` for every implementation but ``"eager"``).
"""

from __future__ import annotations

import operator
import types
import weakref

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.cache_utils import EncoderDecoderCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert import modeling_bert as _mb
from transformers.models.bert.modeling_bert import eager_attention_forward
from transformers.masking_utils import AttentionMaskInterface, bidirectional_mask_function, sdpa_mask
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

from .ops.attention import attention, attention_reference, attention_varlen, attention_varlen_reference
from .ops.layer_norm import add_layer_norm
from .nn.int8_linear import _int8_ffn, bound_add_layer_norm, bound_int8_ffn, ffn_mismatch

__all__ = ["ATTN_IMPLEMENTATION", "sparsebert_attention_forward", "use_unpadded", "register", "encoder_of",
           "mark_compressed", "unmark_compressed", "QUANT_METHOD", "set_attention_precision", "attention_precision",
           "fuse_layer_norms", "unfuse_layer_norms", "fused_layer_norms", "fuse_qkv", "unfuse_qkv", "fused_qkv",
           "fuse_ffn", "unfuse_ffn", "fused_ffn", "ffn_fusable",
           "qkv_parts"]

ATTN_IMPLEMENTATION = "sparsebert"
PRECISION_ATTR = "sparsebert_attention_precision"  # on the model's config, read by every layer


def _as_key_padding(keep: Tensor) -> Tensor | None:
    """A 4-D bool keep-mask [batch, heads or 1, q, k] whose heads and query rows all agree is a
    key-padding mask: return it as [batch, k]; None for any other mask. A mask of shape
    [batch, 1, 1, k] (what :func:`sparsebert_mask` builds) is one by its shape alone; any other
    shape needs a look at the data, which torch.compile / torch.export cannot trace, so there the
    mask goes to the kernel as it is (same result, padding not skipped)."""
    if keep.shape[1] == 1 and keep.shape[2] == 1:
        return keep[:, 0, 0, :]
    if torch.compiler.is_compiling():
        return None
    first = keep[:, :1, :1, :]
    if not torch.equal(keep, first.expand_as(keep)):
        return None
    return first[:, 0, 0, :]


def set_attention_precision(model: nn.Module, precision: str = "fp32") -> nn.Module:
    """The ``precision`` every layer's ``"sparsebert"`` attention runs at (``sparsebert.ops.attention``):
    ``"fp32"`` (default), ``"bf16"`` (q, k and v rounded to bfloat16 before the two matmuls, which
    accumulate in fp32: bf16 dot products at twice the fp32 rate on CPUs with AVX-512 BF16) or
    ``"int8"`` (q, k, v and the probabilities quantized to 8 bits, both matmuls in int32; inference
    only: training raises). It is kept on the model's config
    (``config.sparsebert_attention_precision``), which every attention layer shares. The training
    path (the references) rounds the same way. Returns ``model``."""
    from .ops.attention import PRECISIONS

    if precision not in PRECISIONS:
        raise ValueError(f"attention precision must be one of {PRECISIONS}, got {precision!r}")
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"set_attention_precision expects a transformers model (with a config), got "
                        f"{type(model).__name__}")
    if precision == "fp32":
        config.__dict__.pop(PRECISION_ATTR, None)
    else:
        setattr(config, PRECISION_ATTR, precision)
    return model


def attention_precision(model_or_config) -> str:
    """The attention precision a model (or its config) runs at: ``"fp32"`` unless set (or for
    None: modules without a config)."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, PRECISION_ATTR, "fp32")


def _needs_autograd(dropout: float, *tensors: Tensor) -> bool:
    """True when attention must run the differentiable references: dropout, or grad mode on with
    an input that requires grad."""
    return dropout > 0 or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def sparsebert_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """transformers' attention-function interface over ``sparsebert.ops.attention``.

    query/key/value ``[batch, heads, seq, head_dim]`` (any head count: head-pruned layers work),
    the mask as transformers builds it (None, 4-D bool with True = keep, or additive float), or
    packed tokens ``[1, heads, total_tokens, head_dim]`` with ``cu_seq_lens_q`` / ``max_length_q``
    in ``kwargs`` (the unpadded encoder) which run ``attention_varlen``. Returns
    ``([batch, seq, heads, head_dim], None)``: attention weights are never materialized, and
    ``output_attentions=True`` raises ValueError.

    With ``dropout > 0``, or grad mode on and an input that requires grad, the same attention runs
    through the ops' differentiable references (``attention_reference`` /
    ``attention_varlen_reference``, with ``dropout``) instead of the inference-only kernels.
    """
    if kwargs.get("output_attentions"):
        raise ValueError(
            f"the {ATTN_IMPLEMENTATION!r} attention implementation never materializes attention weights: "
            f"output_attentions={kwargs['output_attentions']!r} is not supported. Use the 'eager' implementation "
            "to get them (model.set_attn_implementation('eager'), after sparsebert.use_unpadded(model, enabled=False) "
            "on an unpadded model)"
        )
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"attention dropout must be in [0, 1], got {dropout}")
    if key.shape[1] != query.shape[1]:  # grouped-query attention: repeat the key/value heads
        rep = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(rep, dim=1)
        value = value.repeat_interleave(rep, dim=1)
    train = _needs_autograd(dropout, query, key, value)
    precision = attention_precision(getattr(module, "config", None))

    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        if query.shape[0] != 1:
            raise ValueError(f"packed tokens come as batch 1, got query of shape {tuple(query.shape)}")
        max_len = kwargs.get("max_length_q")
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, H, D)
        cu = cu.to(torch.int32)
        max_len = int(max_len) if max_len is not None else int((cu[1:] - cu[:-1]).max())
        if train:
            out = attention_varlen_reference(q, k, v, cu, max_len, scaling, precision, dropout_p=dropout)
        else:
            out = attention_varlen(q, k, v, cu, max_len, scaling, precision)
        return out.unsqueeze(0), None  # (1, tokens, H, D)

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    mask = attention_mask
    if mask is None and causal and query.shape[2] > 1:
        q_len, kv_len = query.shape[2], key.shape[2]
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)[None, None]
    elif mask is not None and mask.dim() == 4:
        mask = mask[:, :, :, : key.shape[2]]
        kp = _as_key_padding(mask) if mask.dtype == torch.bool else None  # lets the kernel skip padding
        if kp is not None:
            mask = kp
    if train:
        out = attention_reference(query, key, value, mask, scaling, precision, dropout_p=dropout)
    else:
        out = attention(query, key, value, mask, scaling, precision)
    return out.transpose(1, 2).contiguous(), None  # (B, S, H, D)


def sparsebert_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                    mask_function=None, attention_mask: Tensor | None = None, local_size: int | None = None,
                    allow_is_causal_skip: bool = True, allow_is_bidirectional_skip: bool = False,
                    use_vmap: bool = False, device="cpu", **kwargs) -> Tensor | None:
    """transformers' mask builder for the ``"sparsebert"`` implementation: a plain bidirectional
    mask with padding (BERT's encoder) becomes a ``[batch, 1, 1, kv_length]`` bool key-padding
    mask, which the attention function recognizes by its shape (no data-dependent check, so it
    traces under torch.compile and torch.export); every other mask is ``sdpa_mask``'s."""
    if mask_function is bidirectional_mask_function and local_size is None and not use_vmap:
        from transformers.masking_utils import prepare_padding_mask

        padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
        if padding is None:
            return None
        return padding[:, None, None, :kv_length].to(device=device, dtype=torch.bool)
    kwargs.update(q_offset=q_offset, kv_offset=kv_offset, attention_mask=attention_mask, local_size=local_size,
                  allow_is_causal_skip=allow_is_causal_skip, allow_is_bidirectional_skip=allow_is_bidirectional_skip,
                  use_vmap=use_vmap, device=device)
    if mask_function is not None:
        kwargs["mask_function"] = mask_function
    return sdpa_mask(batch_size, q_length, kv_length, **kwargs)


def register() -> None:
    """Registers ``"sparsebert"`` with transformers (done on import; calling again is harmless)."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, sparsebert_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sparsebert_mask)


register()


# --- unpadded encoder ---------------------------------------------------------------------------


# What encoder_of accepts, for its messages.
_SUPPORTED = ("BERT-style layers (attention.self with query/key/value, intermediate, output): BERT, RoBERTa, "
              "XLM-RoBERTa, ELECTRA and their task heads")


def encoder_of(model: nn.Module, caller: str = "use_unpadded") -> nn.Module:
    """The encoder of a BERT-family model; TypeError, naming ``caller`` and what it accepts, for
    anything else (DistilBERT and ALBERT, whose layers are laid out otherwise, included)."""
    base = getattr(model, "base_model", model)
    encoder = getattr(base, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if encoder is None or layers is None or not hasattr(base, "embeddings"):
        raise TypeError(f"{caller} expects a BERT-family model (embeddings, then encoder.layer of {_SUPPORTED}), "
                        f"got {type(model).__name__}")
    for i, layer in enumerate(layers):
        self_attn = getattr(getattr(layer, "attention", None), "self", None)
        if self_attn is None or not (all(hasattr(self_attn, n) for n in ("query", "key", "value"))
                                     or _is_fused_qkv(self_attn)):
            raise TypeError(f"{caller}: layer {i} of {type(model).__name__} ({type(layer).__name__}) is not a "
                            f"BERT-style layer; supported: {_SUPPORTED}")
        if getattr(layer, "is_decoder", False) or getattr(self_attn, "is_causal", False):
            raise TypeError(f"{caller}: layer {i} is a decoder layer; only bidirectional encoders are supported")
    return encoder


def _key_padding(mask: Tensor | None, batch: int, seq: int, device) -> Tensor:
    """The [batch, seq] keep-mask behind whatever mask transformers handed the encoder."""
    if mask is None:
        return torch.ones(batch, seq, dtype=torch.bool, device=device)
    if mask.dim() == 2:
        return mask != 0
    if mask.dim() == 4:
        kp = _as_key_padding(mask if mask.dtype == torch.bool else mask == 0)
        if kp is not None:
            return kp
    raise ValueError(
        f"the unpadded encoder needs a key-padding mask; got a mask of shape {tuple(mask.shape)} that "
        "differs between query rows"
    )


_BERT_CLASSES = (_mb.BertLayer, _mb.BertAttention, _mb.BertSelfAttention, _mb.BertSelfOutput, _mb.BertIntermediate,
                 _mb.BertOutput)


def _bert_classes() -> tuple:
    return _BERT_CLASSES


def _lean_path_applies(encoder: nn.Module, kwargs: dict) -> bool:
    """Whether the unpadded encoder may run its layers as ``_lean_bert_layer``: the same modules
    called in the same order on the same tensors as transformers' BERT layer forward, without its
    Python around them (``benchmarks/bench_steps.py`` measures the gain). Only for inference
    (grad mode off, eval mode: no dropout, no references), transformers' own BERT layer classes
    (``chunk_size_feed_forward`` 0, no cross-attention), no hooks on the modules the lean path
    does not call (transformers records hidden states and attentions with hooks), and no
    ``output_attentions``."""
    if torch.is_grad_enabled() or encoder.training or kwargs.get("output_attentions"):
        return False
    if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks:
        return False
    layer_cls, attn_cls, self_cls, self_out_cls, inter_cls, out_cls = _bert_classes()
    # Submodules through _modules: nn.Module.__getattr__ costs about as much as the check (this
    # runs on every forward).
    for layer in encoder._modules["layer"]:
        if type(layer) is not layer_cls or layer.chunk_size_feed_forward or "crossattention" in layer._modules:
            return False
        lm = layer._modules
        attn = lm["attention"]
        parts = ((layer, layer_cls), (attn, attn_cls), (attn._modules["self"], self_cls),
                 (attn._modules["output"], self_out_cls), (lm["intermediate"], inter_cls), (lm["output"], out_cls))
        for module, cls in parts:
            if type(module) is not cls or module._forward_hooks or module._forward_pre_hooks:
                return False
    return True


def _lean_bert_layer(layer: nn.Module, x: Tensor, cu: Tensor, max_len: int, precision: str) -> Tensor:
    """One BERT layer in inference on packed tokens ``x [tokens, hidden]``: what ``BertLayer``'s
    forward computes (dropout is the identity in eval mode), module by module; through the
    layer's plan (:func:`_layer_plan`) where it has one."""
    if _LAYER_PLANS:
        plan = _layer_plan(layer, x.dtype)
        if plan is not None:
            return _run_plan(plan, x, cu, max_len, precision)
    attn = layer._modules["attention"]._modules
    sa = attn["self"]
    sm = sa._modules
    t = x.shape[0]
    hd = sa.attention_head_size
    qkv = sm.get(QKV_ATTR)
    if qkv is not None and _is_fused_qkv(sa):
        q, k, v = (p.view(t, -1, hd) for p in qkv(x).split(sa._sparsebert_qkv_sizes, -1))
    else:
        q = sm["query"](x).view(t, -1, hd)
        k = sm["key"](x).view(t, -1, hd)
        v = sm["value"](x).view(t, -1, hd)
    ctx = attention_varlen(q, k, v, cu, max_len, sa.scaling, precision).view(t, -1)
    a = attn["output"](ctx, x)
    return layer.feed_forward_chunk(a)  # transformers': output(intermediate(a), a); fuse_ffn's when fused


# --- a layer's ops with their arguments read once -------------------------------------------------
#
# In the lean path a BERT layer is five ops (the QKV projection, attention, the output projection,
# its add + LayerNorm, the FFN), but reaching them through the modules (module calls, the fused
# forwards' checks, reading buffers) cost about 40 us of Python a layer on top of the ops: 0.5 ms
# of a BERT-base forward at 1x128 (AMD Zen 4). A layer plan holds the five calls with their
# arguments bound, and is used while everything it was built from is the same object: the state
# (:func:`_layer_state`, about 100 reads) is taken on every forward and compared item by item by
# identity, so a module replaced, a buffer reassigned, an attribute set, a hook added or a fused
# forward undone sends the layer back through its modules (and a new plan is built where one
# applies). Bit for bit the module path: the same ops on the same arguments.

_LAYER_PLANS = True  # off: every layer runs through its modules (tests and bench_steps compare)
_PLANS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _func(module: nn.Module, name: str):
    """The function behind a method patched on ``module`` (None where the class's own runs); the
    function, not the bound method, so that a plan never holds its layer."""
    return getattr(module.__dict__.get(name), "__func__", module.__dict__.get(name))


def _linear_state(m) -> tuple:
    call_state = getattr(m, "_call_state", None)
    return (m,) if call_state is None else call_state()


def _norm_state(ln) -> tuple:
    p = getattr(ln, "_parameters", {})
    w, b = p.get("weight"), p.get("bias")
    return (ln, w, b, None if w is None else w.dtype, None if b is None else b.dtype, getattr(ln, "eps", None))


def _layer_state(layer: nn.Module, dtype: torch.dtype) -> tuple:
    """Everything a plan of ``layer`` for inputs of ``dtype`` is built from (see above)."""
    lm = layer._modules
    am = lm["attention"]._modules
    sa, so, inter, out = am["self"], am["output"], lm["intermediate"], lm["output"]
    sm, som, im, om = sa._modules, so._modules, inter._modules, out._modules
    sd = sa.__dict__
    return (dtype, sa, so, inter, out, _func(sa, "forward"), _func(so, "forward"), _func(inter, "forward"),
            _func(out, "forward"), _func(layer, "feed_forward_chunk"), im.get("intermediate_act_fn"),
            _no_dropout(som["dropout"]), _no_dropout(om["dropout"]), sd.get("_sparsebert_qkv_sizes"),
            sd.get("scaling"), sd.get("attention_head_size"), *_linear_state(sm.get(QKV_ATTR)),
            *_linear_state(som["dense"]), *_linear_state(im["dense"]), *_linear_state(om["dense"]),
            *_norm_state(som["LayerNorm"]), *_norm_state(om["LayerNorm"]))


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(map(operator.is_, a, b))


def _layer_plan(layer: nn.Module, dtype: torch.dtype) -> tuple | None:
    """``layer``'s plan for inputs of ``dtype``, built again when its state changed; None where
    the layer is not in a configuration a plan covers."""
    state = _layer_state(layer, dtype)
    entry = _PLANS.get(layer)
    if entry is None or not _same(entry[0], state):
        entry = (state, _build_plan(layer, dtype))
        _PLANS[layer] = entry
    return entry[1]


def _bound(m, dtype: torch.dtype):
    """``m``'s forward with its arguments bound (``_bound_forward`` of the INT8 layers), or None."""
    bound_forward = getattr(m, "_bound_forward", None)
    return None if bound_forward is None else bound_forward(dtype)


def _build_plan(layer: nn.Module, dtype: torch.dtype) -> tuple | None:
    """The configuration ``compress`` gives INT8 models: query, key and value fused
    (:func:`fuse_qkv`), both add + LayerNorms fused (:func:`fuse_layer_norms`), eval-mode
    dropout, every projection an INT8 layer whose forward is its op alone
    (``_bound_forward``), and either the FFN as one op (:func:`fuse_ffn`, its LayerNorm inside)
    or the GELU fused into the up projection (:func:`sparsebert.fuse_activations`)."""
    lm = layer._modules
    am = lm["attention"]._modules
    sa, so, inter, out = am["self"], am["output"], lm["intermediate"], lm["output"]
    som, im, om = so._modules, inter._modules, out._modules
    if (_func(sa, "forward") is not _fused_qkv_forward or _func(so, "forward") is not _fused_output_forward
            or _func(out, "forward") is not _fused_output_forward or _func(inter, "forward") is not None
            or not (_no_dropout(som["dropout"]) and _no_dropout(om["dropout"]))):
        return None
    ln1, ln2 = som["LayerNorm"], om["LayerNorm"]
    norms = []
    for ln in (ln1, ln2):
        if not (type(ln) is nn.LayerNorm and ln.weight is not None and ln.bias is not None
                and ln.weight.dtype == ln.bias.dtype == dtype and len(ln.normalized_shape) == 1):
            return None
        norms.append((ln.weight, ln.bias, ln.eps))
    qkv = sa._modules.get(QKV_ATTR)
    bound = [_bound(m, dtype) for m in (qkv, som["dense"])]
    if None in bound:
        return None
    ffnf = _func(layer, "feed_forward_chunk")
    if ffnf is _fused_ffn_forward:
        ffn = None if _ffn_mismatch(layer) is not None else bound_int8_ffn(im["dense"], om["dense"], ln2, dtype)
    elif ffnf is None and type(im.get("intermediate_act_fn")) is nn.Identity:
        up, down = (_bound(m, dtype) for m in (im["dense"], om["dense"]))
        w2, b2, eps2 = norms[1]
        ffn = None if up is None or down is None else (lambda a: add_layer_norm(down(up(a)), a, w2, b2, eps2))
    else:
        return None
    if ffn is None:
        return None
    out, (w1, b1, eps1) = bound[1], norms[0]
    # the output projection and its add + LayerNorm as one op where it is INT8 (dense or block-sparse)
    out_norm = bound_add_layer_norm(som["dense"], ln1, dtype) or (lambda h, r: add_layer_norm(out(h), r, w1, b1, eps1))
    return (bound[0], sa._sparsebert_qkv_sizes, sa.attention_head_size, sa.scaling, out_norm, ffn)


def _run_plan(plan: tuple, x: Tensor, cu: Tensor, max_len: int, precision: str) -> Tensor:
    qkv, sizes, hd, scaling, out_norm, ffn = plan
    t = x.shape[0]
    q, k, v = qkv(x).split(sizes, -1)
    ctx = attention_varlen(q.view(t, -1, hd), k.view(t, -1, hd), v.view(t, -1, hd), cu, max_len, scaling, precision)
    return ffn(out_norm(ctx.view(t, -1), x))


# --- residual add + LayerNorm in one op -----------------------------------------------------------


def _output_classes() -> tuple:
    from transformers.models.bert import modeling_bert as mb

    return (mb.BertSelfOutput, mb.BertOutput)


def _fused_output_forward(self, hidden_states: Tensor, input_tensor: Tensor) -> Tensor:
    """``BertSelfOutput`` / ``BertOutput`` forward with the residual add and the LayerNorm as one
    ``sparsebert.ops.add_layer_norm`` (:func:`_add_norm`)."""
    m = self._modules
    return _add_norm(m["LayerNorm"], _dropout(m["dropout"], m["dense"](hidden_states)), input_tensor)


def _dropout(module: nn.Module, h: Tensor) -> Tensor:
    """``module(h)``, skipped where it is the identity (a module call costs microseconds, several
    per layer)."""
    return h if _no_dropout(module) else module(h)


def _no_dropout(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Dropout`` that returns its input: eval mode or p=0, no hooks."""
    return type(module) is nn.Dropout and not (module.training and module.p > 0) and not (
        module._forward_hooks or module._forward_pre_hooks)


def _add_norm(ln: nn.LayerNorm, h: Tensor, input_tensor: Tensor) -> Tensor:
    """``ln(h + input_tensor)`` as one ``sparsebert.ops.add_layer_norm``. Where gradients are
    needed, or the tensors do not share one dtype and shape as the op requires (mixed dtypes under
    ``torch.autocast``), the module's own add and LayerNorm: the unfused forward, which the op's
    reference is."""
    if (torch.is_grad_enabled() and (h.requires_grad or input_tensor.requires_grad or ln.weight.requires_grad
                                     or ln.bias.requires_grad)) \
            or not (h.dtype == input_tensor.dtype == ln.weight.dtype == ln.bias.dtype) or h.shape != input_tensor.shape:
        return ln(h + input_tensor)
    return add_layer_norm(h, input_tensor, ln.weight, ln.bias, ln.eps)


def _norm_fusable(module: nn.Module) -> bool:
    ln = getattr(module, "LayerNorm", None)
    return (isinstance(module, _output_classes()) and type(ln) is nn.LayerNorm and len(ln.normalized_shape) == 1
            and ln.weight is not None and ln.bias is not None)


def fuse_layer_norms(model: nn.Module) -> list[str]:
    """Runs the residual add and LayerNorm that end every transformers BERT attention block and
    FFN (``BertSelfOutput``, ``BertOutput``) as one ``sparsebert.ops.add_layer_norm``: one pass
    over the ``[tokens, hidden]`` activation instead of three. In place, on the modules' forward
    (so the padded and the unpadded encoder both run it); inference only: where gradients are
    needed the modules add and normalize as before. Modules already fused, LayerNorms without
    weight or bias, and other families' classes are left as they are. :func:`sparsebert.compress`
    calls it (``CompressConfig(fuse=True)``); :func:`unfuse_layer_norms` undoes it. Returns the
    names of the modules fused."""
    fused = []
    for name, module in model.named_modules():
        if _norm_fusable(module) and "forward" not in module.__dict__:
            module.forward = types.MethodType(_fused_output_forward, module)
            fused.append(name)
    return fused


def unfuse_layer_norms(model: nn.Module) -> list[str]:
    """The inverse of :func:`fuse_layer_norms`. Returns the names of the modules unfused."""
    unfused = []
    for name, module in model.named_modules():
        fwd = module.__dict__.get("forward")
        if fwd is not None and getattr(fwd, "__func__", None) is _fused_output_forward:
            del module.forward
            unfused.append(name)
    return unfused


def fused_layer_norms(model: nn.Module) -> list[str]:
    """The names of the modules :func:`fuse_layer_norms` fused."""
    return [name for name, module in model.named_modules() if _is_norm_fused(module)]


# --- an FFN's two projections as one op ----------------------------------------------------------


def _fused_ffn_forward(self, attention_output: Tensor) -> Tensor:
    """``BertLayer.feed_forward_chunk`` with the FFN's up projection, activation and down projection
    as one ``sparsebert::bsr_int8_ffn`` (:func:`sparsebert.nn.int8_ffn`), then ``BertOutput``'s
    dropout, residual add and LayerNorm: in the same op when :func:`fuse_layer_norms` fused them
    (and dropout is off, the up projection has no SmoothQuant factors, the LayerNorm is in the
    activations' dtype), else as before.
    Where gradients are needed, or the layer no longer qualifies (a projection replaced, the
    activation unfused, hooks added since :func:`fuse_ffn`), transformers' forward."""
    inter, out = self._modules["intermediate"], self._modules["output"]
    if (torch.is_grad_enabled() and attention_output.requires_grad) or _ffn_mismatch(self) is not None:
        return out(inter(attention_output), attention_output)
    om = out._modules
    ln, drop, up, down = om["LayerNorm"], om["dropout"], inter._modules["dense"], om["dense"]
    if _is_norm_fused(out):
        if (_no_dropout(drop) and up._buffers["smooth"] is None
                and ln.weight.dtype == ln.bias.dtype == attention_output.dtype):
            # the add + LayerNorm in the same op, on each chunk of rows while it is in L1
            return _int8_ffn(attention_output, up, down, ln)
        return _add_norm(ln, _dropout(drop, _int8_ffn(attention_output, up, down)), attention_output)
    return ln(_dropout(drop, _int8_ffn(attention_output, up, down)) + attention_output)


def _is_norm_fused(module: nn.Module) -> bool:
    return getattr(module.__dict__.get("forward"), "__func__", None) is _fused_output_forward


def _is_ffn_fused(module: nn.Module) -> bool:
    return getattr(module.__dict__.get("feed_forward_chunk"), "__func__", None) is _fused_ffn_forward


def ffn_fusable(layer: nn.Module) -> str | None:
    """Why ``layer``'s FFN cannot run as one op (:func:`fuse_ffn`), or None when it can."""
    layer_cls = _bert_classes()[0]
    if type(layer) is not layer_cls:
        return f"a {type(layer).__name__}, not transformers' BertLayer"
    if "feed_forward_chunk" in layer.__dict__:
        return "its feed_forward_chunk is already replaced"
    return _ffn_mismatch(layer)


def _ffn_mismatch(layer: nn.Module) -> str | None:
    """What :func:`ffn_fusable` checks on the layer's modules (also on every fused forward)."""
    inter_cls, out_cls = _bert_classes()[4:]
    inter, out = layer._modules.get("intermediate"), layer._modules.get("output")
    if type(inter) is not inter_cls or type(out) is not out_cls:
        return "its intermediate or output is not transformers' BertIntermediate / BertOutput"
    if inter._forward_hooks or inter._forward_pre_hooks or out._forward_hooks or out._forward_pre_hooks:
        return "its intermediate or output has hooks (they would no longer run)"
    if not isinstance(inter._modules.get("intermediate_act_fn"), nn.Identity):
        return "its activation is a module of its own (fuse_activations moves a GELU into the up projection)"
    if "forward" in out.__dict__ and not _is_norm_fused(out):
        return "its output's forward is replaced"
    return ffn_mismatch(inter._modules.get("dense"), out._modules.get("dense"))


def fuse_ffn(model: nn.Module) -> list[str]:
    """Runs the FFN of every transformers BERT layer whose two projections are block-sparse INT8
    (:class:`sparsebert.nn.SparseInt8Linear`, the GELU in the up projection's epilogue) as one
    ``sparsebert::bsr_int8_ffn``: each thread takes a few rows at a time through the up projection,
    the GELU, the quantization of the hidden activation and the down projection, so the hidden
    activation (four times the width of the model) never leaves its core's caches. The same
    numbers. In place, on the layer's ``feed_forward_chunk`` (the padded and the unpadded encoder
    both call it); the modules stay as they are, so the state dict does not change. Layers that
    do not qualify (:func:`ffn_fusable` says why) are left as they are. :func:`sparsebert.compress`
    calls it (``CompressConfig(fuse=True)``); :func:`unfuse_ffn` undoes it. Returns the names of
    the layers fused."""
    fused = []
    for name, module in model.named_modules():
        if _is_bert_layer(module) and ffn_fusable(module) is None:
            module.feed_forward_chunk = types.MethodType(_fused_ffn_forward, module)
            fused.append(name)
    return fused


def _is_bert_layer(module: nn.Module) -> bool:
    return type(module) is _bert_classes()[0]


def unfuse_ffn(model: nn.Module) -> list[str]:
    """The inverse of :func:`fuse_ffn`. Returns the names of the layers unfused."""
    unfused = []
    for name, module in model.named_modules():
        if _is_ffn_fused(module):
            del module.feed_forward_chunk
            unfused.append(name)
    return unfused


def fused_ffn(model: nn.Module) -> list[str]:
    """The names of the layers :func:`fuse_ffn` fused."""
    return [name for name, module in model.named_modules() if _is_ffn_fused(module)]


# --- Q, K and V as one projection ---------------------------------------------------------------

QKV_ATTR = "qkv"  # the fused projection on a BertSelfAttention
QKV_SIZES_ATTR = "_sparsebert_qkv_sizes"  # (query, key, value) output sizes, how qkv's output splits
_QKV_PARTS = ("query", "key", "value")


def _fused_qkv_forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None, past_key_values=None,
                       **kwargs):
    """``BertSelfAttention`` forward with the query, key and value projections as one layer
    (``self.qkv``, its output split in three): one GEMM and one activation quantization instead of
    three. Everything after the projections is transformers' forward."""
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.attention_head_size)
    q, k, v = (p.view(*hidden_shape).transpose(1, 2)
               for p in self.qkv(hidden_states).split(self._sparsebert_qkv_sizes, -1))
    if past_key_values is not None:
        cache = past_key_values.self_attention_cache if isinstance(past_key_values, EncoderDecoderCache) \
            else past_key_values
        k, v = cache.update(k, v, self.layer_idx)
    attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                                eager_attention_forward)
    out, weights = attention_interface(self, q, k, v, attention_mask,
                                       dropout=0.0 if not self.training else self.dropout.p, scaling=self.scaling,
                                       **kwargs)
    return out.reshape(*input_shape, -1).contiguous(), weights


def _is_fused_qkv(module: nn.Module) -> bool:
    return getattr(module.__dict__.get("forward"), "__func__", None) is _fused_qkv_forward


def qkv_layout(module: nn.Module, qkv: nn.Module, sizes) -> None:
    """Puts ``qkv`` (one layer computing query, key and value, outputs of ``sizes``) in place of
    ``module``'s three projections and its forward on it. ``load`` calls it with an empty layer
    built from the saved spec; :func:`fuse_qkv` with the stacked layers."""
    for name in _QKV_PARTS:
        module._modules.pop(name, None)
    module.add_module(QKV_ATTR, qkv)
    setattr(module, QKV_SIZES_ATTR, tuple(int(s) for s in sizes))
    module.forward = types.MethodType(_fused_qkv_forward, module)


def _qkv_fusable(module: nn.Module) -> str | None:
    """Why ``module``'s projections cannot become one layer, or None when they can."""
    from .nn.concat import mismatch

    if type(module) is not _bert_classes()[2]:  # BertSelfAttention
        return f"a {type(module).__name__}, not transformers' BertSelfAttention"
    if "forward" in module.__dict__:
        return "its forward is already replaced"
    parts = [module._modules.get(n) for n in _QKV_PARTS]
    if any(p is None for p in parts):
        return "it lacks a query, key or value projection"
    if any(p._forward_hooks or p._forward_pre_hooks for p in parts):
        return "a projection has hooks (they would no longer run)"
    return mismatch(parts)


def fuse_qkv(model: nn.Module) -> list[str]:
    """Runs the query, key and value projections of every transformers BERT self-attention as one
    layer: their weights stacked into ``self.qkv`` (of the projections' own type, INT8 values and
    scales moved as they are, :func:`sparsebert.nn.cat_outputs`), whose output is split in three.
    One GEMM and one activation quantization per layer instead of three, the same numbers. In
    place; the projections are removed (``qkv_parts`` gives them back as separate layers). Layers
    whose projections differ in type or options (a calibrated model that kept one of them in fp32,
    SmoothQuant factors of their own), have hooks, or are of another class are left as they are.
    :func:`sparsebert.compress` calls it (``CompressConfig(fuse=True)``); :func:`unfuse_qkv`
    undoes it. Every fused layer is built before the model is touched. Returns the names of the
    self-attention modules fused."""
    from .nn.concat import cat_outputs

    plan = []
    for name, module in model.named_modules():
        if _qkv_fusable(module) is None:
            parts = [module._modules[n] for n in _QKV_PARTS]
            plan.append((name, module, cat_outputs(parts), [p.out_features for p in parts]))
    for name, module, qkv, sizes in plan:
        qkv_layout(module, qkv, sizes)
    return [name for name, *_ in plan]


def qkv_parts(module: nn.Module) -> dict[str, nn.Module]:
    """{"query": ..., "key": ..., "value": ...} of a self-attention module fused by
    :func:`fuse_qkv`: new layers split from ``qkv`` (exactly what it computes)."""
    from .nn.concat import split_outputs

    if not _is_fused_qkv(module):
        raise ValueError(f"{type(module).__name__} is not fused by fuse_qkv")
    return dict(zip(_QKV_PARTS, split_outputs(module.qkv, getattr(module, QKV_SIZES_ATTR))))


def unfuse_qkv(model: nn.Module) -> list[str]:
    """The inverse of :func:`fuse_qkv`: ``query``, ``key`` and ``value`` back as separate layers
    (of the fused layer's type, split from it exactly), transformers' forward. Returns the names
    of the modules unfused."""
    plan = [(name, module, qkv_parts(module)) for name, module in model.named_modules() if _is_fused_qkv(module)]
    for name, module, parts in plan:
        del module.forward
        module._modules.pop(QKV_ATTR)
        module.__dict__.pop(QKV_SIZES_ATTR, None)
        for attr, part in parts.items():
            module.add_module(attr, part)
    return [name for name, *_ in plan]


def fused_qkv(model: nn.Module) -> list[str]:
    """The names of the self-attention modules :func:`fuse_qkv` fused."""
    return [name for name, module in model.named_modules() if _is_fused_qkv(module)]


def _unpadded_encoder_forward(
    self,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    encoder_hidden_states: Tensor | None = None,
    encoder_attention_mask: Tensor | None = None,
    past_key_values=None,
    use_cache: bool | None = None,
    **kwargs,
):
    if encoder_hidden_states is not None or past_key_values is not None:
        raise ValueError("the unpadded encoder runs bidirectional self-attention only (no cross-attention, no cache)")
    impl = getattr(getattr(self, "config", None), "_attn_implementation", ATTN_IMPLEMENTATION)
    if impl != ATTN_IMPLEMENTATION:
        # Packed tokens are one sequence to any other attention: each sequence would attend to the
        # others' tokens.
        raise ValueError(
            f"the unpadded encoder needs the {ATTN_IMPLEMENTATION!r} attention implementation, but the model now "
            f"uses {impl!r}: call sparsebert.use_unpadded(model, enabled=False) before switching implementations"
        )
    b, s, hidden = hidden_states.shape
    keep = _key_padding(attention_mask, b, s, hidden_states.device)
    lengths = keep.sum(1)
    cu = torch.zeros(b + 1, dtype=torch.int32, device=hidden_states.device)
    cu[1:] = lengths.cumsum(0)
    max_len = int(lengths.max()) if b else 0
    idx = keep.reshape(-1).nonzero().squeeze(1)
    x = hidden_states.reshape(b * s, hidden).index_select(0, idx).unsqueeze(0)  # [1, tokens, hidden]
    if _lean_path_applies(self, kwargs):
        x = x[0]
        precision = attention_precision(getattr(self, "config", None))
        for layer in self._modules["layer"]:
            x = _lean_bert_layer(layer, x, cu, max_len, precision)
    else:
        varlen = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max_len, "max_length_k": max_len}
        for layer in self.layer:
            x = layer(x, None, **kwargs, **varlen)
        x = x[0]
    out = hidden_states.new_zeros(b * s, hidden)
    out.index_copy_(0, idx, x)
    return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=out.view(b, s, hidden))


def use_unpadded(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Runs a BERT-family model's encoder on packed tokens: padding is removed once after the
    embeddings, every layer (linears, layer norms, GELU, ``attention_varlen``) sees only real
    tokens, and the padded layout is restored at the output.

    Outputs at real tokens equal the padded model's within rounding; padding positions of
    ``last_hidden_state`` are zeros (the padded model computes values there that nothing should
    read). So what reads them differs: ``BertForQuestionAnswering``'s loss, a softmax over every
    position, padding included, and the pooled output of a left-padded batch (its first token is
    padding). Sets the model's attention implementation to ``"sparsebert"``; ``enabled=False``
    restores the encoder and the previous implementation. Hidden states recorded per layer
    (``output_hidden_states=True``) come back packed, ``[1, tokens, hidden]``, all but the last
    (the padded ``last_hidden_state``). In inference (grad mode off, eval mode) on transformers'
    BERT layers with no hooks, each layer runs as the same module calls without the layer
    forward's Python around them (bit-equal; ``benchmarks/bench_steps.py`` measures the gain);
    any other case calls the layers' own forward. Decoder layers (causal self-attention, cross-attention,
    KV cache) are refused with TypeError. Trainable like the padded path: with gradients or
    attention dropout, attention runs ``attention_varlen_reference`` (per sequence, with the
    dropout) instead of the kernel. Returns ``model``.
    """
    encoder = encoder_of(model)
    if enabled:
        if "_sparsebert_prev_attn" not in encoder.__dict__:
            encoder._sparsebert_prev_attn = model.config._attn_implementation
        encoder.forward = types.MethodType(_unpadded_encoder_forward, encoder)
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
    else:
        encoder.__dict__.pop("forward", None)
        prev = encoder.__dict__.pop("_sparsebert_prev_attn", None)
        if prev is not None:
            model.set_attn_implementation(prev)
    return model


# --- transformers' quantizer registry: from_pretrained / save_pretrained of compressed models ----

QUANT_METHOD = "sparsebert"
_LOAD_HINT = "load it with sparsebert.load(directory)"
_SAVE_HINT = "save it with sparsebert.save(model, directory)"

from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer  # noqa: E402
from transformers.utils.quantization_config import QuantizationConfigMixin  # noqa: E402


class SparsebertQuantizationConfig(QuantizationConfigMixin):
    """What ``config.json`` of a model written by :func:`sparsebert.save` carries under
    ``quantization_config``: the method name, the format version and the manifest file that
    describes every layer."""

    def __init__(self, format_version: int = 1, manifest: str = "sparsebert.json", **kwargs):
        self.quant_method = QUANT_METHOD
        self.format_version = format_version
        self.manifest = manifest

    def to_dict(self):
        return {"quant_method": QUANT_METHOD, "format_version": self.format_version, "manifest": self.manifest}


class SparsebertHfQuantizer(HfQuantizer):
    """Makes transformers' own entry points refuse a sparsebert model with a pointer to
    sparsebert's: ``from_pretrained`` on a directory written by :func:`sparsebert.save`, and
    ``save_pretrained`` of a compressed model (which would otherwise write packed buffers that
    no plain model can read)."""

    requires_calibration = False

    def validate_environment(self, *args, **kwargs):
        raise ValueError(f"this directory holds a model compressed by sparsebert (packed weights): {_LOAD_HINT}")

    def is_serializable(self, *args, **kwargs):
        raise ValueError(f"this model was compressed by sparsebert and holds packed weights: {_SAVE_HINT}")

    @property
    def is_trainable(self):
        return False

    def _process_model_before_weight_loading(self, model, **kwargs):  # pragma: no cover - refused above
        raise ValueError(_LOAD_HINT)

    def _process_model_after_weight_loading(self, model, **kwargs):  # pragma: no cover - refused above
        raise ValueError(_LOAD_HINT)


def _register_quantizer() -> None:
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(SparsebertQuantizationConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(SparsebertHfQuantizer)


_register_quantizer()


def mark_compressed(model: nn.Module) -> None:
    """Tells transformers the model is quantized by sparsebert (its ``save_pretrained`` then
    points to :func:`sparsebert.save`)."""
    qconfig = SparsebertQuantizationConfig()
    model.config.quantization_config = qconfig
    model.hf_quantizer = SparsebertHfQuantizer(qconfig)


def unmark_compressed(model: nn.Module) -> None:
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
