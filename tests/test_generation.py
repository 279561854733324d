"""Seeded sampling and the embedded default's model."""

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
    assert alone[0] == crowd[1]
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
