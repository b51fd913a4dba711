"""Param groups (no decay, layer-wise LR), 8-bit optimizers on CPU, and training options through the Trainer:
gradient clipping, bf16-mixed and torch.compile on a tiny user module."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import BertConfig, BertForMaskedLM

from lit_llm.training.optim import build_optimizer, layer_id, layerwise_param_groups, no_decay_param_groups, num_layers


def tiny_bert(layers: int = 2) -> BertForMaskedLM:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=32)
    return BertForMaskedLM(config)


def _lr_of(groups, name_part, model):
    """The lr of the group that holds the parameter whose name contains ``name_part``."""
    param = next(p for n, p in model.named_parameters() if name_part in n)
    return next(g["lr"] for g in groups if any(q is param for q in g["params"]))


def test_layerwise_exact_ratios_embeddings_below_layers_below_head():
    model = tiny_bert()
    groups = layerwise_param_groups(model, lr=1.0, decay=0.5, weight_decay=0.01)
    # 2 blocks: head 1, layer 1 -> 0.5, layer 0 -> 0.25, embeddings -> 0.125
    assert _lr_of(groups, "embeddings.word_embeddings", model) == 0.125
    assert _lr_of(groups, "encoder.layer.0.attention.self.query.weight", model) == 0.25
    assert _lr_of(groups, "encoder.layer.1.output.dense.weight", model) == 0.5
    assert _lr_of(groups, "cls.predictions.transform.dense.weight", model) == 1.0
    assert sorted({g["lr_scale"] for g in groups}) == [0.125, 0.25, 0.5, 1.0]
    # every trainable parameter is in exactly one group (the tied decoder weight once, with the embeddings)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_layerwise_no_weight_decay_on_bias_layernorm_embeddings():
    model = tiny_bert()
    groups = layerwise_param_groups(model, lr=1.0, decay=0.5, weight_decay=0.01)
    for name, param in model.named_parameters():
        group = next(g for g in groups if any(q is param for q in g["params"]))
        expected = 0.0 if ("bias" in name or "LayerNorm" in name or "embeddings" in name) else 0.01
        assert group["weight_decay"] == expected, name


def test_layer_id_and_num_layers():
    assert num_layers(tiny_bert(layers=3)) == 3
    assert layer_id("bert.embeddings.LayerNorm.weight", 3) == 0
    assert layer_id("bert.encoder.layer.2.output.dense.bias", 3) == 3
    assert layer_id("transformer.h.0.attn.c_attn.weight", 3) == 1
    assert layer_id("transformer.wte.weight", 3) == 0
    assert layer_id("cls.predictions.bias", 3) == 4


def test_layer_decay_out_of_range_raises_with_the_value():
    with pytest.raises(ValueError, match=r"layer_decay=1.5: the per-layer decay must be in \(0, 1\]"):
        layerwise_param_groups(tiny_bert(), lr=1.0, decay=1.5)


def test_num_layers_without_blocks_raises():
    with pytest.raises(ValueError, match="cannot find the transformer blocks of Linear.*layer_decay=None"):
        num_layers(nn.Linear(2, 2))


def test_no_decay_groups_split():
    model = tiny_bert()
    decay, no_decay = no_decay_param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])  # only matmul weights are decayed
    assert any(p is model.bert.embeddings.word_embeddings.weight for p in no_decay["params"])
    assert "weight_decay" not in no_decay_param_groups(model)[0]  # None leaves the optimizer's default


def test_build_optimizer_layer_decay_scales_the_optimizer_lr():
    model = tiny_bert()
    optimizer = build_optimizer(model, functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05), 0.5)
    lrs = sorted({g["lr"] for g in optimizer.param_groups})
    assert lrs == pytest.approx([1e-3 * 0.125, 1e-3 * 0.25, 1e-3 * 0.5, 1e-3])
    # decayed groups take the optimizer's own weight_decay, the others 0
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.05}


@pytest.mark.parametrize("layer_decay", [None, 0.5])
def test_an_extra_module_trains_at_the_optimizers_own_rate(layer_decay):
    model, head = tiny_bert(), nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2))
    optimizer = build_optimizer(model, functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05),
                                layer_decay, extra=head)
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in [*model.parameters(), *head.parameters()]} == in_groups
    for name, param in head.named_parameters():
        group = next(g for g in optimizer.param_groups if any(q is param for q in g["params"]))
        assert group["lr"] == pytest.approx(1e-3) and group["group_name"].startswith("extra_")
        assert group["weight_decay"] == (0.0 if name.endswith("bias") else 0.05)


def _mlm_loss(model: BertForMaskedLM, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids).loss


@pytest.mark.parametrize("name", ["AdamW8bit", "PagedAdamW8bit"])
def test_bitsandbytes_8bit_optimizers_train_on_cpu(name):
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    # hidden 64 so that most weights exceed bitsandbytes' 4096-element threshold and really get 8-bit state
    model = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=128, max_position_embeddings=32))
    optimizer = build_optimizer(model, functools.partial(getattr(bnb.optim, name), lr=3e-3), layer_decay=0.8)
    ids = torch.randint(5, 50, (8, 12))
    first = _mlm_loss(model, ids).item()
    for _ in range(8):
        loss = _mlm_loss(model, ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert _mlm_loss(model, ids).item() < first - 0.5
    big = model.bert.encoder.layer[0].intermediate.dense.weight
    assert optimizer.state[big]["state1"].dtype == torch.uint8  # really 8-bit moments


# --- training options through the Trainer, on a module that is not ours ---------------------------------------


class LinearRegression(pl.LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 1)
        self.lr = lr
        self.grad_norms: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x).float(), y)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # Lightning clips after on_before_optimizer_step and zeroes grads at the start of the next step, so the
        # grads seen here are the clipped ones the optimizer used
        self.grad_norms.append(float(torch.cat([p.grad.flatten() for p in self.parameters()]).norm()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _data(n: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = 100.0 * x.sum(dim=1, keepdim=True)  # large targets -> large gradients
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _trainer(**kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", devices=1, max_steps=4, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
    return pl.Trainer(**{**defaults, **kwargs})


def test_gradient_clipping_bounds_the_grad_norm():
    clipped, free = LinearRegression(), LinearRegression()
    free.load_state_dict(clipped.state_dict())
    _trainer(gradient_clip_val=0.5, gradient_clip_algorithm="norm").fit(clipped, _data())
    _trainer().fit(free, _data())
    assert free.grad_norms[0] > 10  # without clipping the gradient is large...
    assert all(n == pytest.approx(0.5, rel=1e-4) for n in clipped.grad_norms)  # ...with it, exactly the bound


def test_bf16_mixed_runs_the_matmul_in_bf16_and_trains():
    model = LinearRegression(lr=0.01)
    dtypes = []
    model.layer.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    before = model.layer.weight.detach().clone()
    _trainer(precision="bf16-mixed").fit(model, _data())
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert model.layer.weight.dtype == torch.float32  # master weights stay fp32
    assert not torch.equal(before, model.layer.weight)


class CompiledUser(LinearRegression):
    def configure_model(self) -> None:
        # the user's way: compile the inner model; aot_eager keeps the test fast on CPU
        self.layer = torch.compile(self.layer, backend="aot_eager")


def test_torch_compile_of_the_inner_model_trains_like_eager():
    compiled, eager = CompiledUser(lr=0.001), LinearRegression(lr=0.001)
    eager.load_state_dict(compiled.state_dict())
    _trainer().fit(compiled, _data())
    _trainer().fit(eager, _data())
    assert isinstance(compiled.layer, torch._dynamo.eval_frame.OptimizedModule)
    torch.testing.assert_close(compiled.layer._orig_mod.weight, eager.layer.weight)


# ------------------------------------------------------------------ fused Adam / AdamW where the user chose none
def _tagger() -> nn.Module:
    torch.manual_seed(0)  # embeddings, a norm and a head: decayed and undecayed groups, no degenerate gradient
    return nn.Sequential(nn.Embedding(50, 16), nn.LayerNorm(16), nn.Linear(16, 50))


def test_adamw_left_unconfigured_runs_the_fused_kernel_and_steps_like_the_per_tensor_loop():
    fused_model, loop_model = _tagger(), _tagger()
    fused = build_optimizer(fused_model, functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.1))
    loop = torch.optim.AdamW(no_decay_param_groups(loop_model, weight_decay=0.1), lr=1e-2)
    assert all(group["fused"] for group in fused.param_groups)
    assert fused.defaults["fused"] is True and fused.state_dict()["param_groups"][0]["fused"] is True
    assert loop.param_groups[0]["fused"] is None
    x = torch.randint(0, 50, (4, 8))
    for _ in range(3):
        for model, optimizer in ((fused_model, fused), (loop_model, loop)):
            nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
            optimizer.step()
            optimizer.zero_grad()
    for (name, a), (_, b) in zip(fused_model.named_parameters(), loop_model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_fused_kernel_with_layer_decay_keeps_each_groups_rate():
    optimizer = build_optimizer(tiny_bert(), functools.partial(torch.optim.Adam, lr=0.1), layer_decay=0.5)
    assert all(group["fused"] for group in optimizer.param_groups)
    assert sorted({group["lr"] for group in optimizer.param_groups}) == [0.0125, 0.025, 0.05, 0.1]


@pytest.mark.parametrize("choice", [{"fused": False}, {"foreach": True}, {"foreach": False}])
def test_an_explicit_implementation_choice_is_kept(choice):
    optimizer = build_optimizer(tiny_bert(), functools.partial(torch.optim.AdamW, lr=1e-3, **choice))
    assert not optimizer.param_groups[0]["fused"]
    for key, value in choice.items():
        assert optimizer.param_groups[0][key] is value


def test_other_optimizers_and_ineligible_parameters_are_left_alone():
    sgd = build_optimizer(tiny_bert(), functools.partial(torch.optim.SGD, lr=0.1))
    assert not sgd.param_groups[0].get("fused")
    # an integer-dtype parameter (as in a quantized layer) has no fused kernel: the whole optimizer stays as built
    model = tiny_bert()
    model.register_parameter("codes", nn.Parameter(torch.zeros(3, dtype=torch.int8), requires_grad=False))
    adam = torch.optim.Adam([*model.parameters()], lr=1e-3)
    assert adam.param_groups[0]["fused"] is None
    from lit_llm.training.optim import use_fused_kernel

    assert use_fused_kernel(adam).param_groups[0]["fused"] is None


def test_fused_optimizer_state_survives_a_checkpoint_round_trip():
    model = tiny_bert()
    optimizer = build_optimizer(model, functools.partial(torch.optim.AdamW, lr=1e-2))
    x = torch.randint(0, 50, (2, 8))
    model(input_ids=x, labels=x).loss.backward()
    optimizer.step()
    state = optimizer.state_dict()
    again = build_optimizer(model, functools.partial(torch.optim.AdamW, lr=1e-2))
    again.load_state_dict(state)
    assert again.param_groups[0]["fused"] is True
    model(input_ids=x, labels=x).loss.backward()
    again.step()  # a fused step on the restored state (its step counters on the parameters' device)


class FusedUser(LinearRegression):
    def configure_optimizers(self):
        return build_optimizer(self, functools.partial(torch.optim.AdamW, lr=self.lr))


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_the_fused_optimizer_trains_under_lightning_with_gradient_clipping(precision):
    model = FusedUser(lr=0.01)
    before = model.layer.weight.detach().clone()
    trainer = _trainer(precision=precision, gradient_clip_val=0.5)
    trainer.fit(model, _data())
    assert trainer.optimizers[0].param_groups[0]["fused"] is True
    assert all(n == pytest.approx(0.5, rel=1e-3) for n in model.grad_norms)  # clipped, then the fused step
    assert not torch.equal(before, model.layer.weight)


def _stepped(optimizer, model):
    x = torch.randint(0, 50, (4, 8))
    nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
    optimizer.step()
    optimizer.zero_grad()
    return optimizer.state_dict()


def test_a_checkpoint_of_another_implementation_resumes_on_the_one_chosen_now():
    model = _tagger()
    # a checkpoint written before the fused default: torch's per-tensor loop (fused None)
    old = _stepped(torch.optim.AdamW(no_decay_param_groups(model, 0.01), lr=1e-3), model)
    assert old["param_groups"][0]["fused"] is None
    resumed = build_optimizer(model, functools.partial(torch.optim.AdamW, lr=1e-3))
    resumed.load_state_dict(old)
    assert all(group["fused"] is True for group in resumed.param_groups)
    assert all(s["step"].dtype == torch.float32 for s in resumed.state.values())
    _stepped(resumed, model)
    # a fused checkpoint resumed where the user now says fused: false keeps the user's choice
    explicit = build_optimizer(model, functools.partial(torch.optim.AdamW, lr=1e-3, fused=False))
    explicit.load_state_dict(resumed.state_dict())
    assert all(group["fused"] is False for group in explicit.param_groups)
    _stepped(explicit, model)


def test_the_fused_step_under_a_grad_scaler_unscales_clips_and_skips_non_finite_steps():
    model = _tagger()
    optimizer = build_optimizer(model, functools.partial(torch.optim.AdamW, lr=1e-2))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randint(0, 50, (4, 8))
    before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())).backward()
    scaler.unscale_(optimizer)  # as Lightning's AMP plugin does before clipping
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
    assert float(norm) < 100  # unscaled: the scale of 1024 is gone before clipping
    scaler.step(optimizer)
    scaler.update()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # an inf gradient: the scaler skips the step and the weights stay
    after = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    scaler.scale(nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()) * float("inf")).backward()
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(after, model.parameters(), strict=True))
    assert optimizer.param_groups[0]["fused"] is True
