"""Seeded sampling and the embedded default's model."""

import pytest
import torch

from flywheel.generation import HFBackend
from flywheel.modeling import TinyModelConfig, build_char_tokenizer, build_tiny_model, count_parameters, load_member

CONFIG = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def backend(batch_size=64):
    model, tokenizer = build_tiny_model(CONFIG, seed=0)
    model.eval()
    return HFBackend(model, tokenizer, batch_size=batch_size)


def test_samples_depend_on_their_seed_not_on_the_batch():
    b = backend()
    alone = b.generate(["12+34="], [[7, 8]], temperature=1.0, max_new_tokens=6)
    crowd = backend(batch_size=3).generate(["5+5=", "12+34=", "999+1="], [[1, 2], [7, 8], [3, 4]],
                                           temperature=1.0, max_new_tokens=6)
    # the same draws; the summed log-probability only to float rounding: the kernels round per batch shape,
    # differently on each CPU (bit equality across batches held on Intel, not on AMD EPYC)
    assert [(c.text, c.n_tokens, c.stopped) for c in alone[0]] == [(c.text, c.n_tokens, c.stopped) for c in crowd[1]]
    assert [c.logprob for c in alone[0]] == pytest.approx([c.logprob for c in crowd[1]], rel=1e-5, abs=1e-5)
    again = b.generate(["12+34="], [[7, 8]], temperature=1.0, max_new_tokens=6)
    assert again == alone
    assert all(c.n_tokens <= 6 and c.logprob <= 0 for c in alone[0])


def test_greedy_ignores_seeds():
    b = backend()
    first = b.generate(["12+34="], [[1, 2]], temperature=0.0, max_new_tokens=6)[0]
    assert first[0].text == first[1].text


def test_tokenizer_is_one_token_per_character_with_bos():
    tok = build_char_tokenizer()
    ids = tok("71+52=")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 7
    assert tok.decode(ids, skip_special_tokens=True) == "71+52="


def test_default_model_is_about_a_million_parameters_and_nope():
    model, _ = build_tiny_model(TinyModelConfig(), seed=0)
    assert 0.8e6 < count_parameters(model) < 1.3e6
    model.eval()
    ids = torch.tensor([[1, 10, 4, 13, 8, 5, 14]])
    with torch.no_grad():
        a = model(ids, position_ids=torch.arange(7)[None]).logits
        b = model(ids, position_ids=torch.arange(7)[None] + 100).logits
    assert torch.allclose(a, b, atol=1e-5)  # no positional encoding: position ids do not matter


def test_saved_model_loads_by_path(tmp_path):
    model, tokenizer = build_tiny_model(CONFIG, seed=0)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    loaded, loaded_tok = load_member(tmp_path / "m")
    assert loaded_tok.padding_side == "left"
    assert count_parameters(loaded) == count_parameters(model)


# --- backend selection (CPU) and the vLLM backend (GPU only) ---------------------------------------------------

def test_backend_selection(monkeypatch):
    import pytest

    from flywheel import generation
    from flywheel.errors import InputError

    assert generation.choose_backend("hf") == "hf"
    monkeypatch.setattr(generation, "vllm_available", lambda: (False, "CUDA is not available"))
    assert generation.choose_backend("auto") == "hf"
    with pytest.raises(InputError) as error:
        generation.choose_backend("vllm")
    assert str(error.value) == "config: field 'generate.backend': generate.backend=vllm but CUDA is not available"
    monkeypatch.setattr(generation, "vllm_available", lambda: (True, ""))
    assert generation.choose_backend("auto") == "vllm" and generation.choose_backend("vllm") == "vllm"
    assert generation.choose_backend("hf") == "hf"  # an explicit 'hf' is never overridden


def test_vllm_availability_is_reported_honestly():
    from flywheel.generation import vllm_available

    usable, why = vllm_available()
    if not torch.cuda.is_available():
        assert not usable and why == "CUDA is not available"
    else:
        try:
            import vllm  # noqa: F401
            assert usable
        except ImportError:
            assert not usable and "vllm does not import" in why


def test_load_backends_follows_the_choice(tmp_path, monkeypatch):
    from flywheel import generation
    from flywheel.config import GenerateConfig
    from flywheel.stages import generate as stage

    model, tokenizer = build_tiny_model(CONFIG, seed=0)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    auto = GenerateConfig(backend="auto")
    monkeypatch.setattr(generation, "vllm_available", lambda: (False, "CUDA is not available"))
    backends = stage.load_backends(tmp_path / "m", batch_size=8, device="cpu", progress=False, precision="auto",
                                   config=auto)
    assert [type(b).__name__ for b in backends] == ["HFBackend"]
    monkeypatch.setattr(generation, "vllm_available", lambda: (True, ""))
    (chosen,) = stage.load_backends(tmp_path / "m", batch_size=8, device="cpu", progress=False, precision="auto",
                                    config=auto)
    assert isinstance(chosen, generation.VLLMBackend) and chosen.model_path == str(tmp_path / "m")


def test_cli_rejects_vllm_without_cuda_in_one_line(tmp_path, capsys):
    from flywheel.cli import main
    from flywheel.generation import vllm_available

    if vllm_available()[0]:
        import pytest

        pytest.skip("vLLM is usable here")
    code = main(["generate", "-s", "generate.backend=vllm", "--round", "1", "--prompts", str(tmp_path / "p.parquet"),
                 "--model", str(tmp_path), "--out", str(tmp_path / "s.parquet")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "generate.backend=vllm but" in err


def _vllm_usable():
    from flywheel.generation import vllm_available

    return vllm_available()[0]


@pytest.mark.gpu
@pytest.mark.skipif(not _vllm_usable(), reason="needs CUDA and vllm (the [gpu] extra)")
def test_vllm_and_hf_write_the_same_sample_schema(tmp_path):
    from flywheel.generation import VLLMBackend

    model, tokenizer = build_tiny_model(CONFIG, seed=0)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    prompts, seeds = ["12+34=", "5+5="], [[1, 2, 3], [4, 5, 6]]
    hf = HFBackend(model.eval(), tokenizer).generate(prompts, seeds, temperature=1.0, max_new_tokens=6)
    vllm = VLLMBackend(tmp_path / "m", gpu_memory_utilization=0.3).generate(prompts, seeds, temperature=1.0,
                                                                            max_new_tokens=6)
    again = VLLMBackend(tmp_path / "m", gpu_memory_utilization=0.3).generate(prompts, seeds, temperature=1.0,
                                                                             max_new_tokens=6)
    assert vllm == again  # seeded per request
    assert [len(row) for row in vllm] == [len(row) for row in hf] == [3, 3]
    for row in vllm:
        for c in row:
            assert isinstance(c.text, str) and 1 <= c.n_tokens <= 6 and c.logprob <= 0
    greedy_hf = HFBackend(model.eval(), tokenizer).generate(prompts, [[0], [0]], temperature=0.0, max_new_tokens=6)
    greedy_vllm = VLLMBackend(tmp_path / "m", gpu_memory_utilization=0.3).generate(prompts, [[0], [0]],
                                                                                  temperature=0.0, max_new_tokens=6)
    assert [[c.text for c in r] for r in greedy_vllm] == [[c.text for c in r] for r in greedy_hf]


def test_vllm_bench_exits_cleanly_without_a_gpu(capsys, monkeypatch):
    import runpy
    import sys

    from tests.conftest import ROOT

    if _vllm_usable():
        pytest.skip("a GPU machine runs the real benchmark")
    monkeypatch.setattr(sys, "argv", ["vllm_throughput.py"])
    module = runpy.run_path(str(ROOT / "bench" / "vllm_throughput.py"))
    assert module["main"]() == 0
    assert "skipped:" in capsys.readouterr().out


class RecordingBackend:
    """A generation backend that answers with the text it was shown and the seed it got, and records calls."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, seeds, *, temperature, max_new_tokens):
        from flywheel.generation import Completion

        self.calls.append((list(prompts), [list(row) for row in seeds]))
        return [[Completion(text=f"{prompt}|{seed}", n_tokens=1, logprob=0.0) for seed in row]
                for prompt, row in zip(prompts, seeds)]


def test_views_split_samples_across_phrasings_in_canonical_order():
    from flywheel.config import GenerateConfig
    from flywheel.rng import derive_seed
    from flywheel.stages.generate import generate
    from flywheel.tasks import ReversedAddition

    task = ReversedAddition()
    assert task.views("71+52=", 2) == ["71+52=", "52+71="] and task.views("11+11=", 2) == ["11+11=", "51+7="]
    prompts = [{"id": "p", "prompt": "21+543="}, {"id": "q", "prompt": "11+11="}]
    backend = RecordingBackend()
    rows = generate(prompts, [backend], GenerateConfig(samples_per_prompt=3, views=2), task=task, round_index=2)
    seed = {(pid, j): derive_seed(2, pid, 0, j) for pid in "pq" for j in range(3)}
    # sample j is drawn on phrasing j mod 2, with the seed it has without views
    assert backend.calls == [(["21+543=", "543+21=", "11+11=", "51+7="],
                              [[seed["p", 0], seed["p", 2]], [seed["p", 1]], [seed["q", 0], seed["q", 2]],
                               [seed["q", 1]]])]
    assert [(r["prompt_id"], r["sample_idx"], r["completion"]) for r in rows] == [
        ("p", 0, f"21+543=|{seed['p', 0]}"), ("p", 1, f"543+21=|{seed['p', 1]}"), ("p", 2, f"21+543=|{seed['p', 2]}"),
        ("q", 0, f"11+11=|{seed['q', 0]}"), ("q", 1, f"51+7=|{seed['q', 1]}"), ("q", 2, f"11+11=|{seed['q', 2]}")]
    # off (the default, views=1): the prompt as written
    plain = RecordingBackend()
    generate(prompts, [plain], GenerateConfig(samples_per_prompt=3), task=task, round_index=2)
    assert plain.calls[0][0] == ["21+543=", "11+11="]
    # fewer samples than views asked for: no more questions than samples
    one = RecordingBackend()
    generate(prompts[:1], [one], GenerateConfig(samples_per_prompt=1, views=8), task=task, round_index=2)
    assert one.calls[0][0] == ["21+543="]
    four = RecordingBackend()
    generate(prompts[:1], [four], GenerateConfig(samples_per_prompt=4, views=8), task=task, round_index=2)
    assert four.calls[0][0] == task.views("21+543=", 4) and [len(s) for s in four.calls[0][1]] == [1, 1, 1, 1]


def test_addition_views_are_other_operands_with_the_same_sum():
    from flywheel.tasks import ReversedAddition

    task = ReversedAddition()
    question = "1234567+7654321="  # reversed: 7654321 + 1234567 = 8888888
    views = task.views(question, 8)
    assert views[:2] == [question, "7654321+1234567="] and len(set(views)) == 8
    for view in views:
        a, b = view.rstrip("=").split("+")
        assert int(a[::-1]) + int(b[::-1]) == 8888888  # the same answer, so the same vote
        assert max(len(a), len(b)) <= 7 and not a.endswith("0") and not b.endswith("0")  # no leading zeros
    # split sums come in pairs: a'+b' then b'+a'
    assert all(views[i].rstrip("=").split("+")[::-1] == views[i + 1].rstrip("=").split("+") for i in (2, 4, 6))
    # shapes vary: an n+n prompt also gets questions with a shorter operand, which the model finds easier
    assert any(min(len(x) for x in v.rstrip("=").split("+")) < 7 for v in views)
    assert task.views(question, 8) == views and task.views(question, 3) == views[:3]  # deterministic, a prefix
    # a sum with few splits gets the ones there are
    assert task.views("1+1=", 8) == ["1+1=", "2+0=", "0+2="]
    assert sorted(task.views("2+1=", 8)) == ["0+3=", "1+2=", "2+1=", "3+0="]


def test_views_with_a_real_model_answer_the_original_prompt(tiny_seed):
    from flywheel.config import GenerateConfig
    from flywheel.modeling import member_dirs
    from flywheel.rng import derive_seed
    from flywheel.stages.generate import generate
    from flywheel.tasks import ReversedAddition

    model, tokenizer = load_member(member_dirs(tiny_seed)[0])
    backend = HFBackend(model, tokenizer)
    prompts = [{"id": "p", "prompt": "12+3="}]
    rows = generate(prompts, [backend], GenerateConfig(samples_per_prompt=4, temperature=0.7, views=2),
                    task=ReversedAddition(), round_index=1)
    # sample 1 is what the model says to "3+12=" with sample 1's seed
    direct = backend.generate(["3+12="], [[derive_seed(1, "p", 0, 1)]], temperature=0.7, max_new_tokens=32)[0][0]
    assert rows[1]["completion"] == direct.text and [r["sample_idx"] for r in rows] == [0, 1, 2, 3]


def test_label_quality_bench_prints_precision_and_yield_per_views(tiny_seed, capsys, monkeypatch):
    import runpy
    import sys

    from tests.conftest import ROOT

    monkeypatch.setattr(sys, "argv", ["label_quality.py", "--model", str(tiny_seed), "--bucket", "2",
                                      "--prompts", "20", "--samples", "4", "--views", "1", "4"])
    runpy.run_path(str(ROOT / "bench" / "label_quality.py"), run_name="__main__")
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["1"], ["4"])]
    assert len(rows) == 2  # one row per views value: a prec/yield cell per threshold, then seconds
    for row in rows:
        cells = [cell.split("/") for cell in row[1:-1]]
        assert len(cells) == 5 and all(p == "-" or 0 <= float(p) <= 1 for p, _ in cells)
        assert all(0 <= float(y) <= 1 for _, y in cells)
    assert "views  4: mixed" in out


def test_token_batches_hold_many_short_or_few_long_sequences():
    from flywheel.generation import token_batches

    lengths = [2, 2, 3, 3, 3, 5, 8, 8, 40]
    batches = token_batches(lengths, max_new_tokens=4, batch_size=3, batch_tokens=30)
    assert [list(b) for b in batches] == [[0, 1, 2], [3, 4, 5], [6, 7], [8]]  # rows cap, then 2 x (40 + 4) > 30
    assert [i for b in batches for i in b] == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * (lengths[b[-1]] + 4) <= 30)
    assert token_batches([], max_new_tokens=4, batch_size=3, batch_tokens=30) == []


def test_token_budgets_change_the_batches_not_the_samples():
    model, tokenizer = build_tiny_model(CONFIG, seed=0)
    model.eval()
    prompts = ["5+5=", "12+34=", "999+1=", "1+2=", "123456+654321="]
    seeds = [[i, i + 10, i + 20] for i in range(len(prompts))]
    runs = [HFBackend(model, tokenizer, batch_size=64, batch_tokens=budget).generate(
        prompts, seeds, temperature=1.0, max_new_tokens=6) for budget in (8, 40, 10_000)]
    assert [[c.text for c in row] for row in runs[0]] == [[c.text for c in row] for row in runs[2]]
    assert [[c.text for c in row] for row in runs[1]] == [[c.text for c in row] for row in runs[2]]


def test_recorded_logprobs_equal_those_of_the_kept_logits():
    """The step-by-step recorder gives what transformers' ``output_logits`` history gave (log-softmax of the raw
    logits / T at each generated token, summed over the completion), without keeping steps x vocabulary."""
    from flywheel.generation import GumbelSampler, _generated_length

    model, tokenizer = build_tiny_model(CONFIG, seed=0)
    model.eval()
    jobs = [(0, j, prompt, 100 + j) for j, prompt in enumerate(["5+5=", "12+34=", "999+1=", "7+8="])]
    recorded = HFBackend(model, tokenizer)._generate_batch(jobs, 0.7, 10)
    encoded = tokenizer([job[2] for job in jobs], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**encoded, do_sample=False, max_new_tokens=10, return_dict_in_generate=True,
                             output_logits=True,
                             logits_processor=[GumbelSampler([j[3] for j in jobs], 0.7, len(tokenizer))],
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             temperature=None, top_p=None, top_k=None)
    new = out.sequences[:, encoded["input_ids"].shape[1]:]
    kept = torch.log_softmax(torch.stack(out.logits, dim=1).float() / 0.7, -1).gather(-1, new[..., None])[..., 0]
    for completion, tokens, row in zip(recorded, new.tolist(), kept):
        length = _generated_length(tokens, tokenizer.eos_token_id, tokenizer.pad_token_id)
        assert completion.n_tokens == length
        assert completion.logprob == float(row[:length].sum())
