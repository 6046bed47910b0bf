"""Small random BERT-family models for the model-level tests (no hub, seconds to run)."""

import torch
import transformers
from transformers import BertConfig

HEADS = ("BertModel", "BertForSequenceClassification", "BertForTokenClassification", "BertForMaskedLM")


def tiny_config(**kw) -> BertConfig:
    args = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                max_position_embeddings=64, num_labels=3)
    args.update(kw)
    return BertConfig(**args)


def tiny_bert(head: str = "BertModel", seed: int = 0, **kw):
    torch.manual_seed(seed)
    return getattr(transformers, head)(tiny_config(**kw)).eval()


def tiny_inputs(batch: int = 3, seq: int = 12, seed: int = 1, padded: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 512, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    if padded and batch > 1:
        mask[1, seq // 2:] = 0
        mask[-1, 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def first_output(model, inputs) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs)[0]
