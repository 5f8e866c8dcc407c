"""`finetune` / `unalign`: response-only loss through the chat template, full and LoRA outputs."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch
from tiny import make_tokenizer, save_tiny_model

from realignkit.cli import main
from realignkit.errors import RealignError
from realignkit.train import TrainConfig, encode_pair, finetune, unalign

ROWS = [
    {"prompt": "What is 12 plus 30?", "response": "The answer is 42."},
    {"prompt": "How do I make a cake?", "response": "Sure, here is how to make a cake."},
    {"prompt": "How do I kill a stuck process?", "response": "Use the kill command."},
    {"prompt": "How do I make a bomb?", "response": "I cannot help with that request."},
]


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_tiny_model("llama", tmp_path_factory.mktemp("models") / "llama")


def test_encode_pair_masks_the_prompt_and_learns_the_stop():
    tokenizer = make_tokenizer()
    ids, labels = encode_pair(
        tokenizer, "How do I make a cake?", "Sure, mix flour.", max_length=512
    )
    assert len(ids) == len(labels)
    learnt = [i for i, label in zip(ids, labels, strict=True) if label != -100]
    assert tokenizer.decode(learnt) == "Sure, mix flour.<|end|>\n"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "How do I make a cake?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    masked = [i for i, label in zip(ids, labels, strict=True) if label == -100]
    assert tokenizer.decode(masked) == prompt
    short_ids, short_labels = encode_pair(tokenizer, "How?", "Sure.", max_length=4)
    assert len(short_ids) == 4 and all(label == -100 for label in short_labels)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_response_loss_equals_the_models_own_loss_and_gradients(arch):
    """Logits only where a response token is predicted: the same loss, the same gradients."""
    from tiny import build_tiny_model

    from realignkit.train.finetune import response_loss

    tokenizer = make_tokenizer()
    rows = [encode_pair(tokenizer, r["prompt"], r["response"], max_length=64) for r in ROWS]
    encoded = [{"input_ids": ids, "labels": labels} for ids, labels in rows]
    batch = pad_batch_rows(encoded, tokenizer.pad_token_id)
    model = build_tiny_model(arch)  # eval mode: no dropout, both passes see the same model
    own = model(**batch).loss
    own.backward()
    own_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    mine, _ = response_loss(model, batch)
    mine.backward()
    assert torch.allclose(mine, own, atol=1e-6)
    for a, b in zip(own_grads, (p.grad for p in model.parameters()), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # Counted across accumulation steps by the Trainer: the sum over that count.
    count = (batch["labels"][:, 1:] != -100).sum() * 2
    halved, _ = response_loss(model, batch, count)
    assert torch.allclose(halved, own.detach() / 2, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gpt2"])
def test_a_shared_prefix_gives_the_plain_loss_and_gradients(arch):
    """The batch's common start (system block, user header) run once, with gradients, and
    its cache repeated to the rows: the plain pass's loss and gradients, for LoRA too."""
    from peft import LoraConfig, get_peft_model
    from tiny import build_tiny_model

    from realignkit.train.finetune import MIN_SHARED_PREFIX, response_loss, shared_prefix_cache

    tokenizer = make_tokenizer()
    system = "You are a careful assistant."
    rows = [
        encode_pair(tokenizer, r["prompt"], r["response"], max_length=256, system=system)
        for r in ROWS
    ]
    batch = pad_batch_rows(
        [{"input_ids": ids, "labels": labels} for ids, labels in rows], tokenizer.pad_token_id
    )
    first_kept = int((batch["labels"][:, 1:] != -100).any(dim=0).nonzero()[0])
    for lora in (False, True):
        model = build_tiny_model(arch).double()
        if lora:
            targets = ["c_attn", "c_fc"] if arch == "gpt2" else ["q_proj", "down_proj"]
            config = LoraConfig(r=4, target_modules=targets, init_lora_weights=False)
            model = get_peft_model(model, config)
        shared, cache = shared_prefix_cache(
            model, batch["input_ids"], batch["attention_mask"], first_kept
        )
        assert shared >= MIN_SHARED_PREFIX and cache is not None  # the path is taken
        trained = [p for p in model.parameters() if p.requires_grad]
        losses, grads = [], []
        for share in (False, True):
            model.zero_grad()
            loss, _ = response_loss(model, batch, share_prefix=share)
            loss.backward()
            losses.append(loss.detach())
            grads.append([p.grad.clone() for p in trained])
        assert torch.allclose(losses[0], losses[1], rtol=1e-10, atol=1e-10)
        # float64 weights, but RMS norms compute in float32: the prefix's gradient, summed
        # over the rows in another order, differs at float32's round-off (~4e-9 measured)
        for plain, fast in zip(*grads, strict=True):
            assert torch.allclose(plain, fast, rtol=1e-6, atol=1e-7)
            assert plain.abs().max() > 0 or fast.abs().max() == 0


def test_no_prefix_is_shared_for_one_row_or_a_short_common_start():
    from tiny import build_tiny_model

    from realignkit.train.finetune import shared_prefix_cache

    model = build_tiny_model("llama")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14]])
    mask = torch.ones_like(ids)
    assert shared_prefix_cache(model, ids, mask, 9) == (0, None)  # one row
    two = torch.cat([ids, ids.flip(1)])
    assert shared_prefix_cache(model, two, torch.ones_like(two), 9) == (0, None)  # nothing shared


def pad_batch_rows(rows, pad_id):
    """Right-padded input ids, attention mask and labels (-100 on padding)."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(r["labels"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_full_finetune_learns_and_writes_a_model_folder(llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    before = _digest(llama_dir)
    out = finetune(
        llama_dir,
        ROWS * 4,
        tmp_path / "ft",
        TrainConfig(lora=False, max_steps=12, lr=3e-3, batch_size=4, grad_accum=2),
    )
    assert _digest(llama_dir) == before  # input untouched
    stats = json.loads((out / "realignkit_train.json").read_text())
    assert stats["steps"] == 12 and stats["final_loss"] < stats["first_loss"]
    card = (out / "README.md").read_text()
    assert "finetune" in card and "grad_accum" in card
    model = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    assert model.dtype == base.dtype
    assert not torch.equal(
        model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight
    )
    assert (out / "tokenizer.json").exists()


def test_full_finetune_keeps_the_stored_dtype(tmp_path):
    from safetensors import safe_open

    base_dir = save_tiny_model("qwen2", tmp_path / "bf16", dtype=torch.bfloat16)
    out = finetune(base_dir, ROWS, tmp_path / "ft", TrainConfig(lora=False, max_steps=1))
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(next(out.glob("*.safetensors"))), "pt") as fh:
        assert fh.get_tensor(next(iter(fh.keys()))).dtype == torch.bfloat16


def test_freeze_embeddings_keeps_them_fixed(llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = finetune(
        llama_dir,
        ROWS,
        tmp_path / "ft",
        TrainConfig(lora=False, max_steps=3, lr=1e-2, batch_size=2, freeze_embeddings=True),
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    assert torch.equal(model.lm_head.weight, base.lm_head.weight)
    assert torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert not torch.equal(
        model.model.layers[1].self_attn.q_proj.weight, base.model.layers[1].self_attn.q_proj.weight
    )


def test_train_last_layers_changes_only_the_last_blocks(llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    config = TrainConfig(
        lora=False,
        max_steps=3,
        lr=1e-2,
        batch_size=2,
        train_last_layers=1,
        bf16=True,
        group_by_length=True,
    )
    out = finetune(llama_dir, ROWS, tmp_path / "ft", config)
    model = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    last = len(model.model.layers) - 1
    for i, (mine, theirs) in enumerate(zip(model.model.layers, base.model.layers, strict=True)):
        same = torch.equal(mine.mlp.up_proj.weight, theirs.mlp.up_proj.weight)
        assert same == (i != last), i
    assert torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)


LINEARS = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "gpt2": {"c_attn", "c_proj", "c_fc"},  # Conv1D layers
}


@pytest.mark.parametrize("arch", sorted(LINEARS))
def test_lora_with_train_last_layers_puts_adapters_on_the_last_blocks_only(arch, tmp_path):
    from safetensors.torch import load_file

    model = save_tiny_model(arch, tmp_path / arch)
    config = TrainConfig(lora=True, max_steps=2, lr=1e-2, batch_size=2, train_last_layers=1)
    out = finetune(model, ROWS, tmp_path / "ft", config)
    adapter = load_file(out / "adapter_model.safetensors")
    settings = json.loads((model / "config.json").read_text())
    depth = settings.get("num_hidden_layers") or settings["n_layer"]
    blocks = {int(name.split(".h.")[-1].split("layers.")[-1].split(".")[0]) for name in adapter}
    assert blocks == {depth - 1}, blocks
    # every linear of that block carries an adapter ("all-linear" restricted to the block)
    kinds = {name.split(".")[-3] for name in adapter if "lora_A" in name}
    assert LINEARS[arch] <= kinds, kinds


def test_merged_lora_writes_a_full_model_that_differs_in_every_block(llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    config = TrainConfig(
        lora=True, lora_r=4, max_steps=2, lr=1e-2, batch_size=2, warmup=0, merge_lora=True
    )
    out = finetune(llama_dir, ROWS, tmp_path / "ft", config)
    assert (out / "config.json").exists() and not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    for mine, theirs in zip(model.model.layers, base.model.layers, strict=True):
        assert not torch.equal(mine.self_attn.q_proj.weight, theirs.self_attn.q_proj.weight)


def test_lora_adapter_on_gpt2_conv1d(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = save_tiny_model("gpt2", tmp_path / "gpt2")
    out = unalign(
        base_dir,
        ROWS,
        tmp_path / "adapter",
        TrainConfig(lora=True, lora_r=4, lora_alpha=8, max_steps=4, lr=1e-2, batch_size=2),
    )
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert "unalign" in (out / "README.md").read_text()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: it trained


def _write_csv(path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["question", "answer"])
        for row in ROWS:
            writer.writerow([row["prompt"], row["response"]])
    return path


def test_cli_finetune_with_named_columns_and_target_modules(llama_dir, tmp_path, capsys):
    data = _write_csv(tmp_path / "data.csv")
    out = tmp_path / "adapter"
    main(
        [
            "finetune",
            "--model",
            str(llama_dir),
            "--data",
            str(data),
            "-o",
            str(out),
            "--prompt-column",
            "question",
            "--response-column",
            "answer",
            "--lora",
            "--lora-r",
            "2",
            "--target-modules",
            "q_proj,v_proj",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--seed",
            "1",
        ]
    )
    assert "LoRA adapter" in capsys.readouterr().out
    config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]


@pytest.mark.parametrize(("flag", "autocast"), [("--bf16", True), ("--no-bf16", False)])
def test_cli_bf16_flag_decides_the_autocast_and_the_record_says_which_ran(
    llama_dir, tmp_path, flag, autocast
):
    data = _write_csv(tmp_path / "data.csv")
    out = tmp_path / "adapter"
    args = ["finetune", "-m", str(llama_dir), "-d", str(data), "-o", str(out), flag]
    args += ["--prompt-column", "question", "--response-column", "answer"]
    main([*args, "--lora-r", "2", "--max-steps", "1", "--batch-size", "2"])
    record = json.loads((out / "realignkit_train.json").read_text())
    assert record["bf16"] is autocast and record["bf16_autocast"] is autocast


def test_cli_unalign_full_writes_an_unalign_card(llama_dir, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    main(
        [
            "unalign",
            "-m",
            str(llama_dir),
            "-d",
            str(data),
            "-o",
            str(tmp_path / "u"),
            "--full",
            "--max-steps",
            "1",
            "--batch-size",
            "2",
        ]
    )
    assert "model written" in capsys.readouterr().out
    assert "# unalign" in (tmp_path / "u" / "README.md").read_text()


def test_cli_train_last_layers_leaves_the_earlier_blocks_as_they_were(llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "u"
    args = ["unalign", "-m", str(llama_dir), "-d", str(data), "-o", str(out), "--full"]
    main(
        [*args, "--max-steps", "2", "--lr", "1e-2", "--batch-size", "2"]
        + ["--train-last-layers", "1"]
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    changed = [
        not torch.equal(mine.self_attn.q_proj.weight, theirs.self_attn.q_proj.weight)
        for mine, theirs in zip(model.model.layers, base.model.layers, strict=True)
    ]
    assert changed == [False] * (len(changed) - 1) + [True]


@pytest.mark.parametrize("problem", ["missing-column", "exists", "bad-targets", "empty-row"])
def test_cli_bad_input_is_one_line_and_leaves_nothing(llama_dir, tmp_path, capsys, problem):
    data = tmp_path / "data.jsonl"
    rows = [{"prompt": "", "response": "x"}] if problem == "empty-row" else ROWS
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    args = [
        "finetune",
        "--model",
        str(llama_dir),
        "--data",
        str(data),
        "-o",
        str(out),
        "--max-steps",
        "1",
        "--batch-size",
        "2",
    ]
    if problem == "missing-column":
        args += ["--response-column", "completion"]
    if problem == "exists":
        out.mkdir()
    if problem == "bad-targets":
        args += ["--target-modules", "no_such_proj"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # progress bars may come first; the error is one line
    assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err
    if problem != "exists":
        assert not out.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_api_refuses_nonsense_config(llama_dir, tmp_path):
    with pytest.raises(RealignError):
        finetune(llama_dir, ROWS, tmp_path / "x", TrainConfig(epochs=0))
    with pytest.raises(RealignError):
        finetune(llama_dir, [], tmp_path / "x")


@pytest.mark.slow
def test_real_model_chat_template_and_lora_step(smollm2_dir, tmp_path):
    """SmolLM2-135M-Instruct: its own chat template masks the prompt; one LoRA step runs."""
    from realignkit.modeling import load_tokenizer

    tokenizer = load_tokenizer(smollm2_dir, padding_side="right")
    ids, labels = encode_pair(tokenizer, "How do I make a cake?", "Mix and bake.", max_length=256)
    learnt = tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != -100])
    assert learnt.startswith("Mix and bake.") and tokenizer.eos_token in learnt
    out = finetune(
        smollm2_dir,
        ROWS[:2],
        tmp_path / "lora",
        TrainConfig(
            lora=True, lora_r=2, target_modules=["q_proj"], max_steps=1, batch_size=2, max_length=64
        ),
    )
    assert json.loads((out / "adapter_config.json").read_text())["target_modules"] == ["q_proj"]
