"""AutoDropCallback inside the clients people run, through their real packages (CPU, offline, tiny models built
from configs): TRL's `SFTTrainer` (full fine-tune and a PEFT LoRA adapter) and transformers' `Seq2SeqTrainer`,
each resumed exactly from a mid-run checkpoint; W&B (offline mode) and MLflow (local file store), with AutoDrop's
metrics read back from the files they wrote."""

import json
import math
import struct
import zlib

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from hf_autodrop import AutoDropCallback

from .helpers import ALWAYS, make_trainer

# Measured every 2 optimizer steps, the paper's test with a threshold every angle change passes: a trigger at
# the third interval after each reset and a drop one interval later, i.e. drops at steps 8, 16 and 24 of 24.
AUTODROP = dict(drop_delay=1, interval_steps=2, **ALWAYS)
STEPS = 24
DROPS = [8, 16, 24]
# The checkpoint the resumed runs start from: after the first drop, inside the second averaging window
# (triggered at step 14), so the resume needs the dropped lr, the phase and the running average.
STOP = 14


class _Record(TrainerCallback):
    """The lr of every optimizer step, and AutoDrop's state size after each of its measurements."""

    def __init__(self):
        self.lrs = []
        self.state_sizes = []  # (phase, bytes)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append([g["lr"] for g in optimizer.param_groups])

    def _after_measurement(self, state):
        # At the start of the next step (or the run's end), whatever order the callbacks' on_step_end ran in.
        callback = _callback(self.trainer)
        if callback.measurements and callback.measurements[-1]["step"] == state.global_step:
            self.state_sizes.append((callback.measurements[-1]["phase"], callback.autodrop.state_nbytes()))

    def on_step_begin(self, args, state, control, **kwargs):
        self._after_measurement(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._after_measurement(state)


def _with_record(trainer):
    record = next(c for c in trainer.callback_handler.callbacks if isinstance(c, _Record))
    record.trainer = trainer
    return trainer


def _callback(trainer) -> AutoDropCallback:
    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, AutoDropCallback))


def _record(trainer) -> _Record:
    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, _Record))


def _clean(value):
    """`value` comparable with ==: NaN becomes None, in dicts, lists and tuples."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def _autodrop_rows(log_history) -> list:
    """(step, AutoDrop's keys) of every logged row holding AutoDrop's metrics, in order."""
    rows = [(h["step"], {k: v for k, v in h.items() if k.startswith("autodrop/")}) for h in log_history]
    return _clean([row for row in rows if row[1]])


def _training_args(cls, output_dir, save: bool, **overrides):
    kwargs = dict(
        output_dir=str(output_dir),
        max_steps=STEPS,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        logging_steps=4,
        save_strategy="steps" if save else "no",
        save_steps=STOP,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        restore_callback_states_from_checkpoint=True,
    )
    kwargs.update(overrides)
    return cls(**kwargs)


def _straight_and_resumed(build, tmp_path):
    """A straight run of STEPS steps that saves checkpoint-STOP, and a new trainer resumed from that checkpoint."""
    straight = _with_record(build(tmp_path, save=True))
    straight.train()
    resumed = _with_record(build(tmp_path, save=False))
    resumed.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{STOP}"))
    return straight, resumed


def _assert_resume_is_exact(straight, resumed):
    assert straight.state.global_step == resumed.state.global_step == STEPS
    # Bit for bit: every parameter (frozen ones included), the lr of every step after the checkpoint, every
    # measurement AutoDrop made (those before the checkpoint restored from it) and every row it logged.
    named = list(resumed.model.named_parameters())
    assert [n for n, _ in named] == [n for n, _ in straight.model.named_parameters()]
    for (name, p), q in zip(named, straight.model.parameters()):
        assert torch.equal(p.detach(), q.detach()), name
    assert _record(resumed).lrs == _record(straight).lrs[STOP:]
    measurements = _callback(straight).measurements
    assert _clean(_callback(resumed).measurements) == _clean(measurements)
    assert _autodrop_rows(resumed.state.log_history) == _autodrop_rows(straight.state.log_history)
    # The drops really happened, before and after the checkpoint, and lowered the lr the optimizer used.
    assert [m["step"] for m in measurements if m["dropped"]] == DROPS
    assert _callback(resumed).autodrop.num_drops == len(DROPS)
    lrs = [lr[0] for lr in _record(straight).lrs]
    assert lrs[DROPS[0] - 1] == pytest.approx(1e-3) and lrs[DROPS[0]] == pytest.approx(1e-4)
    assert lrs[-1] == pytest.approx(1e-5)


# ---------------------------------------------------------------- TRL SFTTrainer on a tiny GPT-2

WORDS = [f"w{i}" for i in range(24)]


def _tokenizer():
    """A word-level tokenizer over WORDS (built here: nothing is downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<pad>", "<eos>", "<unk>", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def _text_dataset(n=64):
    """Arithmetic progressions of words modulo 24, 8 to 15 words long: a language a tiny model starts to learn."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        start, stride, length = torch.randint(0, 24, (3,), generator=g).tolist()
        rows.append(" ".join(WORDS[(start + k * (stride % 5 + 1)) % 24] for k in range(8 + length % 8)))
    return Dataset.from_dict({"text": rows})


GPT2 = dict(n_positions=32, n_embd=32, n_layer=1, n_head=2)


def _gpt2(vocab_size):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, bos_token_id=1, eos_token_id=1, pad_token_id=0, **GPT2))


def _sft_trainer(output_dir, save, peft_config=None, restore=True):
    from trl import SFTConfig, SFTTrainer

    tokenizer = _tokenizer()
    args = _training_args(
        SFTConfig,
        output_dir,
        save,
        max_length=32,
        bf16=False,
        gradient_checkpointing=False,
        restore_callback_states_from_checkpoint=restore,
    )
    return SFTTrainer(
        model=_gpt2(len(tokenizer)),
        args=args,
        train_dataset=_text_dataset(),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[AutoDropCallback(**AUTODROP), _Record()],
    )


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    return out, *_straight_and_resumed(_sft_trainer, out)


def test_sft_trainer_full_fine_tune_resumes_exactly(sft_runs):
    _, straight, resumed = sft_runs
    _assert_resume_is_exact(straight, resumed)
    # A full fine-tune: AutoDrop holds two float32 copies of every parameter, three while averaging.
    elements = sum(p.numel() for p in straight.model.parameters())
    sizes = _record(straight).state_sizes
    assert sizes == [(phase, (3 if phase == "averaging" else 2) * 4 * elements) for phase, _ in sizes]
    assert {phase for phase, _ in sizes} == {"monitor", "averaging"}


def test_sft_resume_without_the_callback_state_is_caught(sft_runs):
    """The comparison above can fail: a resume that restarts AutoDrop's history drops at other steps."""
    out, straight, _ = sft_runs
    fresh = _with_record(_sft_trainer(out, save=False, restore=False))
    fresh.train(resume_from_checkpoint=str(out / f"checkpoint-{STOP}"))
    dropped = [m["step"] for m in _callback(fresh).measurements if m["dropped"]]
    assert dropped != [m["step"] for m in _callback(straight).measurements if m["dropped"] and m["step"] > STOP]
    assert _record(fresh).lrs != _record(straight).lrs[STOP:]


def test_sft_trainer_lora_snapshots_only_the_adapter_and_resumes_exactly(tmp_path):
    from peft import LoraConfig

    rank = 4

    def build(output_dir, save):
        lora = LoraConfig(
            r=rank,
            lora_alpha=8,
            lora_dropout=0.0,
            target_modules=["c_attn"],
            fan_in_fan_out=True,  # GPT-2's c_attn is a Conv1D
            task_type="CAUSAL_LM",
        )
        return _sft_trainer(output_dir, save, peft_config=lora)

    straight, resumed = _straight_and_resumed(build, tmp_path)
    _assert_resume_is_exact(straight, resumed)
    # LoRA on c_attn (n_embd -> 3 n_embd): A is rank x n_embd, B is 3 n_embd x rank, in each layer.
    n_embd, layers = GPT2["n_embd"], GPT2["n_layer"]
    adapter = layers * (rank * n_embd + 3 * n_embd * rank)
    trainable = [(n, p.numel()) for n, p in straight.model.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n, _ in trainable) and sum(k for _, k in trainable) == adapter
    total = sum(p.numel() for p in straight.model.parameters())
    assert total > 20 * adapter  # the adapter is a small part of the model
    # AutoDrop's tensors are float32 copies of the adapter's elements only: two, three while averaging.
    for callback_of, record_of in ((straight, straight), (resumed, resumed)):
        sizes = _record(record_of).state_sizes
        assert sizes and sizes == [(phase, (3 if phase == "averaging" else 2) * 4 * adapter) for phase, _ in sizes], (
            sizes,
            adapter,
        )
        assert _callback(callback_of).autodrop.state_nbytes() == 2 * 4 * adapter  # monitoring after the last drop
    assert {phase for phase, _ in _record(straight).state_sizes} == {"monitor", "averaging"}


# ---------------------------------------------------------------- transformers Seq2SeqTrainer on a tiny T5


def _seq2seq_dataset(n=64, length=10, vocab=32):
    """Reverse a sequence of tokens (ids 2 and up; 0 is padding, 1 the end): fixed lengths, no tokenizer needed."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(2, vocab, (n, length), generator=g)
    eos = torch.ones(n, 1, dtype=torch.long)
    inputs = torch.cat([x, eos], 1)
    labels = torch.cat([x.flip(1), eos], 1)
    return Dataset.from_dict(
        {"input_ids": inputs.tolist(), "attention_mask": torch.ones_like(inputs).tolist(), "labels": labels.tolist()}
    )


def _seq2seq_trainer(output_dir, save):
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=32,
        d_model=32,
        d_ff=64,
        d_kv=16,
        num_heads=2,
        num_layers=1,
        num_decoder_layers=1,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return Seq2SeqTrainer(
        model=T5ForConditionalGeneration(config),
        args=_training_args(Seq2SeqTrainingArguments, output_dir, save),
        train_dataset=_seq2seq_dataset(),
        callbacks=[AutoDropCallback(**AUTODROP), _Record()],
    )


def test_seq2seq_trainer_resumes_exactly(tmp_path):
    straight, resumed = _straight_and_resumed(_seq2seq_trainer, tmp_path)
    _assert_resume_is_exact(straight, resumed)


# ---------------------------------------------------------------- reporting integrations


def _digits_run(tmp_path, report_to):
    """6 epochs of scikit-learn's digits, one AutoDrop interval per epoch, a drop at epoch 4."""
    trainer = make_trainer(tmp_path / "out", [AutoDropCallback(drop_delay=1, **ALWAYS)], report_to=[report_to])
    trainer.train()
    assert [m["step"] for m in _callback(trainer).measurements if m["dropped"]] == [32]
    return trainer


def _wandb_records(path):
    """The records of a W&B `.wandb` file (a LevelDB-format log of `wandb_internal_pb2.Record` protobufs after a
    7-byte header), checksums checked."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's trailer: too short for a record header
            pos += block - pos % block
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break  # zero padding after the last record
        chunk = data[pos + 7 : pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == checksum, f"{path}: bad checksum at byte {pos}"
        pos += 7 + length
        pending += chunk
        if kind in (1, 4):  # FULL or LAST: a complete record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_run_holds_the_autodrop_metrics(tmp_path, monkeypatch):
    import wandb

    for name, value in dict(
        WANDB_MODE="offline",
        WANDB_DIR=str(tmp_path),
        WANDB_CONFIG_DIR=str(tmp_path / "config"),
        WANDB_CACHE_DIR=str(tmp_path / "cache"),
        WANDB_DATA_DIR=str(tmp_path / "data"),
        WANDB_PROJECT="hf-autodrop-test",
        WANDB_SILENT="true",
        WANDB_CONSOLE="off",
    ).items():
        monkeypatch.setenv(name, value)
    try:
        trainer = _digits_run(tmp_path, "wandb")
    finally:
        wandb.finish()
    (path,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    rows, kinds = [], set()
    for record in _wandb_records(path):
        kinds.add(record.WhichOneof("record_type"))
        if record.HasField("history"):
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    assert "exit" in kinds  # the run was closed
    # The Trainer's W&B integration writes training logs as train/<key> with train/global_step as the step.
    written = [{**row, "step": row["train/global_step"]} for row in rows if "train/global_step" in row]
    written = [{k.removeprefix("train/"): v for k, v in row.items()} for row in written]
    logged = _autodrop_rows(trainer.state.log_history)
    assert _autodrop_rows(written) == logged
    assert logged[-1][1]["autodrop/num_drops"] == 1
    assert any(step == 32 and row["autodrop/num_drops"] == 1 for step, row in logged)  # the drop's row
    # The lr the Trainer logged reached W&B too: the drop shows there.
    lrs = [(row["step"], row["learning_rate"]) for row in written if "learning_rate" in row]
    assert lrs == [(h["step"], h["learning_rate"]) for h in trainer.state.log_history if "learning_rate" in h]
    assert lrs[-1][1] == pytest.approx(0.1 * lrs[0][1])


def test_mlflow_file_store_holds_the_autodrop_metrics(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "hf-autodrop-test")
    # MLflow 3 keeps the file store in maintenance mode and refuses it unless asked.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        trainer = _digits_run(tmp_path, "mlflow")
    finally:
        mlflow.end_run()
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("hf-autodrop-test").experiment_id])
    assert run.info.status == "FINISHED"
    logged = _autodrop_rows(trainer.state.log_history)
    keys = set().union(*(row.keys() for _, row in logged))
    assert (
        {"autodrop/angle", "autodrop/num_drops", "autodrop/lr_scale", "autodrop/phase"} <= keys <= set(run.data.metrics)
    )
    for key in keys:
        expected = [(step, row[key]) for step, row in logged if key in row]
        written = _clean([(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)])
        assert sorted(written, key=repr) == sorted([list(e) for e in expected], key=repr), key
    assert run.data.metrics["autodrop/num_drops"] == 1
    drops = [m.step for m in client.get_metric_history(run.info.run_id, "autodrop/num_drops") if m.value == 1]
    assert min(drops) == 32  # the drop's row
