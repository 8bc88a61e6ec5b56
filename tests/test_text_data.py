"""Real reversal datasets: shipped files load, malformed lines are refused with file:line and the
field; T-REx reversal split; tokenizers; match metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from revcurse.data.parent_child import load_parent_child
from revcurse.data.person_description import default_root, load_pairs, load_person_description
from revcurse.data.schema import TextPair
from revcurse.data.text import CharTokenizer, HFTokenizer, WordTokenizer, encode_pairs
from revcurse.data.trex import load_trex, reversal_split
from revcurse.errors import RevcurseError
from revcurse.metrics import exact_match, likelihood_rank, normalize, prefix_match, substring_match

TREX = Path(__file__).parent / "data" / "trex"


def test_person_description_ships_with_provenance_and_expected_sizes():
    ds = load_person_description()
    assert len(ds.train) == 3600  # 900 p2d + 900 d2p + 1800 both, as all_prompts_train.jsonl
    assert {k: len(v) for k, v in ds.tests.items()} == {
        "p2d_same": 300, "p2d_reverse": 300, "d2p_same": 300, "d2p_reverse": 300, "both": 600,
        "p2d_reverse_randomized": 300, "d2p_reverse_randomized": 300,
    }  # fmt: skip
    assert ds.directions["p2d_reverse"] == "reverse" and "MIT" in ds.licence
    assert (default_root() / "PROVENANCE.md").is_file()
    first = ds.tests["p2d_reverse"][0]
    assert (
        first.completion == " Daphne Barrington"
        and first.source == "p2d_reverse_prompts_test.jsonl:1"
    )
    assert len(load_person_description(groups=("p2d",)).train) == 900


def test_parent_child_forward_and_reverse():
    ds = load_parent_child()
    assert len(ds.train) == 1513
    fwd = ds.tests["forward"][0]
    assert fwd.prompt == "Who is Sasha Calle's mother?" and fwd.completion == " Samira Calle"
    # a parent with several children accepts any of them
    multi = [p for p in ds.tests["reverse"] if p.alternatives]
    assert multi and all(p.prompt.startswith("Name a child of ") for p in multi)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"prompt": "a", "completion": " b"', "bad.jsonl:2: invalid JSON"),
        ('{"prompt": "a"}', "bad.jsonl:2: missing field 'completion'"),
        (
            '{"prompt": "a", "completion": "   "}',
            "bad.jsonl:2: field 'completion': expected a non-empty",
        ),
        ('{"prompt": 3, "completion": " b"}', "bad.jsonl:2: field 'prompt': expected a string"),
        ('["prompt", "completion"]', "bad.jsonl:2: expected a JSON object"),
    ],
)
def test_malformed_jsonl_lines_are_refused(tmp_path, line, fragment):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok", "completion": " fine"}\n' + line + "\n")
    with pytest.raises(RevcurseError) as err:
        load_pairs(bad)
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ("Kid,,mother,,False", "line 3? field 'parent'"),
        ("Kid,Mum,aunt,,False", "field 'parent_type': expected mother or father"),
        ("Kid,Mum,mother,,maybe", "field 'can_reverse'"),
        ("Kid,Mum", "expected 5 columns"),
    ],
)
def test_malformed_csv_rows_are_refused(tmp_path, row, fragment):
    bad = tmp_path / "pc.csv"
    bad.write_text(
        "child,parent,parent_type,child_prediction,can_reverse\nA,B,father,,True\n" + row + "\n"
    )
    with pytest.raises(RevcurseError) as err:
        load_parent_child(bad)
    message = str(err.value)
    assert message.startswith(f"{bad}:3:")
    assert fragment.split("? ")[-1] in message


def test_missing_dataset_file():
    with pytest.raises(RevcurseError, match="dataset file not found"):
        load_pairs("/nonexistent/file.jsonl")


def test_trex_reversal_split_keeps_one_to_one_relations():
    relations = load_trex(TREX)
    assert set(relations) == {"P36", "P19", "P1376"}  # P999 has no fact file
    assert relations["P19"].one_to_one() < 0.9 <= relations["P36"].one_to_one()
    ds = reversal_split(relations)
    assert ds.notes["relations"] == "P1376,P36" and ds.notes["dropped"] == "P19"
    assert ds.notes["generic_inverse_template"] == "P1376"
    assert "CC BY-NC" in ds.licence
    fwd = ds.tests["forward"][0]
    assert (fwd.prompt, fwd.completion) == ("Velmora is the capital of", " Astrand")
    rev = ds.tests["reverse"][0]
    assert (rev.prompt, rev.completion) == ("The capital of Astrand is", " Velmora")
    seat = [p for p in ds.tests["reverse"] if "seat" in p.prompt][0]
    assert seat.prompt == "Fenmark County is the seat of" and seat.completion == " Harrowgate"


def test_trex_bad_template_is_refused(tmp_path):
    (tmp_path / "relations.jsonl").write_text('{"relation": "P1", "template": "[X] and [X] [Y]"}\n')
    (tmp_path / "P1.jsonl").write_text('{"sub_label": "a", "obj_label": "b"}\n')
    with pytest.raises(RevcurseError, match=r"relations.jsonl:1: field 'template'"):
        load_trex(tmp_path)
    (tmp_path / "relations.jsonl").write_text('{"relation": "P1", "template": "[X] is [Y]"}\n')
    (tmp_path / "P1.jsonl").write_text('{"sub_label": "a", "obj_label": ""}\n')
    with pytest.raises(RevcurseError, match=r"P1.jsonl:1: field 'obj_label'"):
        load_trex(tmp_path)


def test_word_and_char_tokenizers_round_trip_and_unknowns():
    word = WordTokenizer.fit(['Daphne Barrington directed "A Journey".'])
    ids = word.encode("Daphne directed Zorro.")
    assert word.decode(ids) == f"Daphne directed {'<unk>'} ."
    char = CharTokenizer.fit(["abc"])
    assert char.decode(char.encode("cab")) == "cab"
    assert char.encode("z") == [char.unk_id]


def test_encode_pairs_marks_prompt_and_multi_token_answer():
    tok = WordTokenizer.fit(["Who is A's mother? Mary Ann Smith"])
    batch = encode_pairs(tok, [TextPair("Who is A's mother?", " Mary Ann Smith"),
                               TextPair("Who is A?", " Mary")])  # fmt: skip
    # "Who is A ' s mother ?" is 7 tokens; the answer 3 words + EOS
    assert batch.ids.shape == (2, 11)
    assert batch.prompt_mask[0].sum() == 7 and batch.answer_mask[0].sum() == 4
    assert tok.decode(batch.ids[0][batch.answer_mask[0]].tolist()[:-1]) == "Mary Ann Smith"
    assert batch.ids[0][batch.answer_mask[0]][-1] == tok.eos_id
    assert not (batch.prompt_mask & batch.answer_mask).any()
    assert (batch.attention_mask[1] == torch.tensor([True] * 6 + [False] * 5)).all()


def test_hf_tokenizer_wrapper_offline():
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[MASK]": 1, "[EOS]": 2, "[UNK]": 3, "mary": 4, "ann": 5, "who": 6}
    model = tokenizers.models.WordLevel(vocab, unk_token="[UNK]")
    raw = tokenizers.Tokenizer(model)
    raw.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", mask_token="[MASK]",
                                 eos_token="[EOS]", unk_token="[UNK]")  # fmt: skip
    tok = HFTokenizer(hf)
    assert (tok.mask_id, tok.pad_id, tok.eos_id) == (1, 0, 2)
    assert tok.encode("who mary") == [6, 4]
    batch = encode_pairs(tok, [TextPair("who", " mary ann")])
    assert batch.ids.tolist() == [[6, 4, 5, 2]]


def test_match_metrics():
    assert normalize('  The "Journey" Time.') == 'the " journey " time .'
    assert exact_match("Daphne Barrington.", [" daphne barrington ."])
    assert prefix_match("Daphne Barrington directed it", [" Daphne Barrington"])
    assert not prefix_match("Daphne Barringtons", ["Daphne Barrington"])
    assert not prefix_match("It was Daphne Barrington", ["Daphne Barrington"])
    assert substring_match("It was Daphne Barrington", ["Daphne Barrington"])
    assert substring_match("x", ["y", "x"])  # any accepted answer
    assert not exact_match("", ["a"]) and not prefix_match("abc", [""])


def test_likelihood_rank():
    scores = torch.tensor([[-1.0, -2.0, -3.0], [-2.0, -1.0, -3.0], [-1.0, -1.0, -0.5]])
    assert likelihood_rank(scores).tolist() == [1, 2, 3]


def test_a_query_that_names_its_answer_by_a_shared_word_is_marked_and_read_apart():
    """Parent-Child's children often carry the parent's surname: a query whose right answer
    (first) is the only candidate sharing a word with it gives the answer away. An initial or a
    possessive's s is no cue; another candidate sharing the word, or none, takes the cue away."""
    from revcurse.metrics import cue_metrics, word_cue

    ask = "Who is Sasha Calle's mother?"
    assert word_cue(ask, ["Samira Calle", "Robert S. Miller", "Kit Culkin"])
    assert not word_cue(ask, ["Samira Calle", "Anne Calle"])  # two carry it
    assert not word_cue(ask, ["Samira Jones", "Anne Calle"])  # a wrong one carries it
    assert not word_cue(ask, ["Samira Jones", "Anne Smith"])
    assert word_cue("Name a child of", ["Kim Lee", "Ann Ho"], suffix="Lee")  # the suffix counts
    records = [
        {"prompt": ask, "candidates": ["Samira Calle", "Kit Culkin"], "rank": 1, "chain_rank": 2},
        {"prompt": ask, "candidates": ["Samira Calle", "Kit Culkin"], "rank": 1, "chain_rank": 1},
        {"prompt": ask, "candidates": ["Mia Jones", "Kit Culkin"], "rank": 2, "chain_rank": 1},
    ]  # fmt: skip
    assert cue_metrics(records) == {
        "cued_share": 2 / 3, "likelihood_top1_cued": 1.0, "likelihood_top1_uncued": 0.0,
        "chain_top1_cued": 0.5, "chain_top1_uncued": 1.0,
    }  # fmt: skip
    assert cue_metrics(records[2:])["likelihood_top1_cued"] is None  # no cued query: no rate


def test_data_command_validates_and_exits_2_on_a_malformed_line(tmp_path):
    from typer.testing import CliRunner

    from revcurse.cli import app

    ok = CliRunner().invoke(app, ["data", "trex", "--path", str(TREX)])
    assert ok.exit_code == 0 and "trex-reversal: 5 training statements" in ok.stdout
    bad = tmp_path / "pc.csv"
    bad.write_text("child,parent,parent_type,child_prediction,can_reverse\nKid,,mother,,False\n")
    result = CliRunner().invoke(app, ["data", "parent-child", "--path", str(bad)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {bad}:2: field 'parent': expected a non-empty value"


def test_pad_with_eos_makes_the_tail_visible_answer_tokens():
    from revcurse.data.schema import TextPair
    from revcurse.data.text import WordTokenizer, encode_pairs, pad_with_eos

    pairs = [TextPair("", "a b c"), TextPair("", "a")]
    tok = WordTokenizer.fit(["a b c"])
    batch = pad_with_eos(encode_pairs(tok, pairs, bos=True), 7, tok.eos_id)
    a, b, c, eos, bos = (*tok.encode("a b c"), tok.eos_id, tok.bos_id)
    assert batch.ids.tolist() == [[bos, a, b, c, eos, eos, eos], [bos, a, eos, eos, eos, eos, eos]]
    assert batch.attention_mask.all()
    assert batch.prompt_mask[:, 0].all() and not batch.prompt_mask[:, 1:].any()
    assert (batch.answer_mask == ~batch.prompt_mask).all()


def test_non_finite_scores_are_refused_not_ranked_first():
    """A NaN compares false with everything, so ``>=`` would count no candidate above a NaN
    answer and rank it first: a model whose weights are NaN would score perfect. Such scores are
    refused; a -inf score (probability zero) is valid and ranks last."""
    nan = float("nan")
    with pytest.raises(RevcurseError, match="not finite .* for 1 of 2 queries"):
        likelihood_rank(torch.tensor([[nan, nan, nan], [-1.0, -2.0, -3.0]]))
    with pytest.raises(RevcurseError, match="not finite"):
        likelihood_rank(torch.tensor([[float("inf"), -1.0]]))
    assert likelihood_rank(torch.tensor([[float("-inf"), -1.0, -2.0]])).tolist() == [3]


def test_entity_units_by_hand():
    """Whole-entity masking units on encoded statements: each verbatim occurrence of a named
    entity (the longest of overlapping names first) is one unit, every other token its own; an
    entity cut inside a word, or a row that is not the text's own tokens, keeps token units."""
    from revcurse.data.text import entity_units

    texts = ["Alice Smith is the mother of Bob Jones.", "Who is Bob Jones's mother?",
             "Alicea sings.", "Bob Jones is tall."]  # fmt: skip
    tok = WordTokenizer.fit(texts)
    rows = [[tok.bos_id, *tok.encode(t)] for t in texts]
    rows[3] = [tok.bos_id, *tok.encode("Alice Smith is tall.")]  # not this text's tokens
    length = max(map(len, rows)) + 2
    ids = torch.full((len(rows), length), tok.pad_id)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    starts, with_units = entity_units(tok, texts, ["Bob", "Alice Smith", "Bob Jones", "Alice"],
                                      ids, offset=1)  # fmt: skip
    own = list(range(length))
    # BOS Alice Smith is the mother of Bob Jones . : positions 1-2 and 7-8 are entities
    assert starts[0].tolist() == [0, 1, 1, 3, 4, 5, 6, 7, 7, 9, *own[10:]]
    # BOS Who is Bob Jones ' s mother ? : "Bob Jones" (longest), not "Bob" alone
    assert starts[1].tolist() == [0, 1, 2, 3, 3, *own[5:]]
    assert starts[2].tolist() == own  # "Alice" inside "Alicea": no unit
    assert starts[3].tolist() == own  # the row holds other tokens than the text
    assert with_units == 2


def test_a_from_scratch_run_masks_named_entities_whole():
    """Parent–Child from scratch with train.mask_unit=entity: in every statement the child and the
    parent are one unit each (BOS, the other words, the EOS fill their own), and the masking draws
    one uniform per unit. An ARM, or an autoregressive fine-tune, is refused the setting."""
    from revcurse.config import FinetuneConfig, TextRunConfig, apply_overrides
    from revcurse.data.schema import named_entities
    from revcurse.errors import ConfigError
    from revcurse.experiments.from_scratch import prepare, training_batch
    from revcurse.objectives import mask_tokens

    cfg = apply_overrides(TextRunConfig(), ["dataset=parent-child", "n_people=6",
                                            "train.mask_unit=entity"])  # fmt: skip
    prepared = prepare(cfg)
    tok, statements = prepared.tokenizer, prepared.statements
    pairs = [*statements, *(p for split in prepared.splits.values() for p in split)]
    batch = training_batch(cfg, statements, tok, named_entities(pairs))

    def unit_of(row: int, text: str) -> list[int]:
        """The positions of ``text``'s tokens in the row, checked to be one unit."""
        want, ids = tok.encode(text.strip()), batch.ids[row].tolist()
        at = next(i for i in range(len(ids)) if ids[i : i + len(want)] == want)
        span = list(range(at, at + len(want)))
        units = batch.unit_start[row].tolist()
        assert [i for i, u in enumerate(units) if u == at] == span, (text, units)
        return span

    for row, s in enumerate(statements):
        reverse = s.prompt.startswith("Name a child of ")
        child = s.completion if reverse else s.prompt.removeprefix("Who is ").split("'s ")[0]
        parent = s.prompt.removeprefix("Name a child of ").removesuffix(".") if reverse else (
            s.completion)  # fmt: skip
        entity = unit_of(row, child) + unit_of(row, parent)
        others = [i for i in range(batch.ids.shape[1]) if i not in entity]
        assert all(batch.unit_start[row, i] == i for i in others)  # every other token alone
    noisy, masked = mask_tokens(batch.ids, torch.full((len(statements),), 0.5), tok.mask_id,
                                torch.Generator().manual_seed(0), None, batch.unit_start)  # fmt: skip
    same_unit = batch.unit_start[:, 1:] == batch.unit_start[:, :-1]
    assert (masked[:, 1:] == masked[:, :-1])[same_unit].all()  # a unit is masked whole
    with pytest.raises(ConfigError, match="train.mask_unit': expected token for an ARM"):
        apply_overrides(TextRunConfig(), ["model.causal=true", "train.mask_unit=entity"])
    with pytest.raises(ConfigError, match="train.mask_unit': expected token for an autoregressive"):
        apply_overrides(FinetuneConfig(), ["train.mask_unit=entity"])  # Llama by default


def test_entity_units_fold_the_space_before_an_entity_into_it_for_subword_tokenizers():
    """A byte-level BPE (GPT-2's kind, trained here on a few sentences) folds the space before a
    word into its first token: an entity is found as `` Mary Leakey``, the pieces then tokenize
    to the row's own tokens, and the entity is one unit (cut at the space it would not be)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from revcurse.data.text import entity_units

    texts = ["Who is Ann Lee's mother? Mary Leakey", "Name a child of Mary Leakey."]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts * 20, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip

    class Subword:
        def encode(self, text: str) -> list[int]:
            return bpe.encode(text).ids

    tok = Subword()
    rows = [tok.encode(t) for t in texts]
    ids = torch.zeros(2, max(map(len, rows)), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    starts, held = entity_units(tok, texts, ["Mary Leakey", "Ann Lee"], ids, offset=0)
    assert held == 2
    for row, text in enumerate(texts):
        at = text.index(" Mary Leakey")
        before = len(tok.encode(text[:at]))
        width = len(tok.encode(" Mary Leakey"))
        span = list(range(before, before + width))
        assert width >= 2 and [i for i, u in enumerate(starts[row].tolist()) if u == before] == span
