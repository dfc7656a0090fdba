"""The RL adapters (spct_jax/integrations/) called the way each framework calls a reward function.

* TRL: a real `trl.GRPOTrainer` run (CPU, a tiny random Llama made here, 2 steps) with the adapter as its reward
  function against a live `spct serve --model tiny-random`; the trainer's logged rewards are checked against the
  server's raw answers, and each GRPO group against one /v1/score item.
* verl, tunix: not installed here (too heavy for the test extra); their calls are reproduced from their source
  (cited at each test) and made against the server.
* OpenRLHF: both generations of its remote-RM client, the request built as its code builds it.

The tiny random GRM never writes a parsable judgement, so its rewards are the fallback; the value mapping
(scales, uncertainty, min_parsed) is checked against the real serve app with a scorer that votes by length.
"""
from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import math
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from test_serve_client import metrics, spct_server

from spct_jax.grm.scorer import Judgement, SampleRecord
from spct_jax.grm.voting import vote
from spct_jax.integrations import openrlhf, tunix, verl
from spct_jax.integrations.options import RewardOptions, group_positions
from spct_jax.integrations.trl import TRLRewardFunction, reward_function
from spct_jax.serve.app import ServeOptions, create_app
from spct_jax.serve.batcher import Batcher
from spct_jax.serve.client import RewardClient
from spct_jax.serve.schema import Limits
from spct_jax.serve.server import serve_in_thread

K = 4  # samples per item on the voting server


class Recorder(httpx.HTTPTransport):
    """An httpx transport that keeps every (request body, response body) it carried, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[tuple[dict, dict]] = []
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        response.read()
        with self.lock:
            self.exchanges.append((json.loads(request.content), json.loads(response.content)))
        return response


class VotingScorer:
    """Sample j gives response r the score min(10, len(r) + j): every response gets a distinct mean and a
    non-zero variance. Contexts containing "garbage" parse no sample, "half" parses one of k."""

    def __init__(self) -> None:
        self.items: list[dict] = []

    def score(self, items, *, k, k_meta, temperature, max_new_tokens, seed, progress):
        out = []
        for it in items:
            self.items.append(it)
            n, ctx = len(it["responses"]), json.dumps(it["context"])
            parsed = 0 if "garbage" in ctx else 1 if "half" in ctx else k
            scores = [tuple(min(10, len(r) + j) for r in it["responses"]) for j in range(parsed)]
            v = vote(scores + [None] * (k - parsed), num_responses=n)
            samples = tuple(SampleRecord(tuple(range(n)), "", "", "", s, None, kept=True) for s in scores) + tuple(
                SampleRecord(tuple(range(n)), "??", "", "", None, "no scores") for _ in range(k - parsed))
            out.append(Judgement(uid=it["uid"], rewards=tuple(float(t) for t in v.totals), best=v.best,
                                 num_valid=v.num_valid, num_failed=v.num_failed, uncertainty=v.uncertainty,
                                 samples=samples))
        return out


def expected(response: str, options: RewardOptions = RewardOptions()) -> tuple[float, float]:
    """(reward, uncertainty) VotingScorer's k votes give `response` under `options`, computed independently."""
    votes = [min(10, len(response) + j) for j in range(K)]
    slope = options.value(2.0) - options.value(1.0)
    return options.value(sum(votes) / K), float(np.var(votes)) * slope**2


@pytest.fixture(scope="module")
def voting() -> Iterator[tuple[str, VotingScorer]]:
    """The real serve app (HTTP, batcher, schema) in-process over VotingScorer."""
    scorer = VotingScorer()
    batcher = Batcher(scorer, max_batch=8, max_queue=64, batch_wait_s=0.005, max_new_tokens=4)
    options = ServeOptions(limits=Limits(default_k=K, max_k=8, has_meta_rm=False, default_k_meta=None), timeout_s=30)
    try:
        with serve_in_thread(create_app(batcher, options)) as (base, _):
            yield base, scorer
    finally:
        batcher.close(drain=False, timeout=5)


@pytest.fixture(scope="module")
def grm(tmp_path_factory) -> Iterator[str]:
    """`spct serve --model tiny-random` (k=2, 8 new tokens, toy template), batching up to 8 items per call."""
    with spct_server(tmp_path_factory.mktemp("grm"), "--max-batch", "8", "--batch-wait-ms", "20") as base:
        yield base


def byte_level_tokenizer():
    """A byte-level BPE tokenizer trained here (no hub access): decode(encode(text)) == text for any text."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["What is 2+2? The answer is 4.", "Name a colour. Blue is a colour.", "Say hello. Hello there!"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


# -- TRL -------------------------------------------------------------------------------------------------------------
class RecordingTRL(TRLRewardFunction):
    """The TRL adapter, also noting what each trainer call got and returned."""

    def __init__(self, *args, recorder: Recorder, **kwargs):
        super().__init__(*args, **kwargs)
        self.recorder, self.calls = recorder, []

    def __call__(self, prompts, completions, **kwargs):
        n0 = len(self.recorder.exchanges)
        out = super().__call__(prompts, completions, **kwargs)
        self.calls.append((list(prompts), list(completions), out, self.recorder.exchanges[n0:], sorted(kwargs)))
        return out


def test_trl_grpo_trainer_is_rewarded_by_spct_serve(grm, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")

    tok = byte_level_tokenizer()
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                   max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                                   eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    policy = transformers.LlamaForCausalLM(cfg)
    data = datasets.Dataset.from_dict({"prompt": [f"Question {i}: what is {i}+{i}?" for i in range(8)]})
    recorder = Recorder()
    adapter = RecordingTRL(RewardClient(grm, timeout=120, transport=recorder), RewardOptions(), "spct_grm",
                           recorder=recorder)
    requests_before = metrics(grm)["requests"]["ok"]
    G = 2
    args = trl.GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=4, num_generations=G,
                          max_completion_length=8, max_steps=2, logging_steps=1, report_to="none", use_cpu=True,
                          save_strategy="no", learning_rate=1e-3, seed=0, dataloader_num_workers=0)
    trainer = trl.GRPOTrainer(model=policy, processing_class=tok, reward_funcs=[adapter], args=args,
                              train_dataset=data)
    trainer.train()
    adapter.close()

    steps = [h for h in trainer.state.log_history if "rewards/spct_grm/mean" in h]
    assert len(steps) == 2 and len(adapter.calls) == 2  # one reward call per optimisation step
    for (prompts, completions, out, exchanges, kwargs), logged in zip(adapter.calls, steps):
        assert {"log_metric", "log_extra", "trainer_state", "completion_ids"} <= set(kwargs)
        groups = group_positions(prompts)
        assert len(prompts) == 4 and [len(g) for g in groups] == [G, G]  # 2 prompts x 2 rollouts
        # One /v1/score request per group, holding that group's completions in order: one GRM item each.
        assert len(exchanges) == len(groups)
        by_context = {req["context"]: (req, ans) for req, ans in exchanges}
        want = [None] * len(prompts)
        for g in groups:
            req, ans = by_context[prompts[g[0]]]
            assert req["responses"] == [completions[i] for i in g] and req["return_samples"] is True
            summed = sum(s["kept"] for s in ans["samples"])
            for i, r in zip(g, ans["rewards"]):
                want[i] = r / summed if summed else 0.0  # the defaults: /get_reward's pointwise rule
        assert out == want
        assert logged["rewards/spct_grm/mean"] == pytest.approx(sum(want) / len(want), abs=1e-6)
        withheld = sum(len(ans["rewards"]) for _, ans in exchanges if not any(x["kept"] for x in ans["samples"]))
        assert logged["spct/withheld"] == pytest.approx(withheld / len(prompts))
    served = metrics(grm)["requests"]["ok"] - requests_before
    assert served == sum(len(c[3]) for c in adapter.calls) == 4  # the server answered exactly these requests


def test_trl_adapter_plain_and_conversational_forms(voting):
    base, scorer = voting
    fn = reward_function(base, scale="centered", timeout=30)
    assert isinstance(fn, TRLRewardFunction) and fn.__name__ == "spct_grm"
    logged, extra = {}, {}
    # Plain text: two groups interleaved (TRL repeats each prompt num_generations times; order must be kept).
    out = fn(prompts=["p1", "p2", "p1", "p2"], completions=["a", "bbbb", "ccc", "dd"], completion_ids=[[1]] * 4,
             log_metric=logged.__setitem__, log_extra=extra.__setitem__)
    opts = RewardOptions(scale="centered")
    assert out == pytest.approx([expected(c, opts)[0] for c in ["a", "bbbb", "ccc", "dd"]])
    assert extra["spct_uncertainty"] == pytest.approx([expected(c, opts)[1] for c in ["a", "bbbb", "ccc", "dd"]])
    assert logged["spct/withheld"] == 0.0 and logged["spct/parsed"] == 1.0 and logged["spct/uncertainty"] > 0
    assert sorted((it["context"], it["responses"]) for it in scorer.items[-2:]) == [("p1", ["a", "ccc"]),
                                                                                    ("p2", ["bbbb", "dd"])]
    # Conversational: prompts are message lists, completions [{"role": "assistant", "content": ...}].
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    out = fn(prompts=[conv, conv], completions=[[{"role": "assistant", "content": "yo"}],
                                               [{"role": "assistant", "content": [{"type": "text", "text": "hey"}]}]])
    assert out == pytest.approx([expected("yo", opts)[0], expected("hey", opts)[0]])
    assert scorer.items[-1]["context"] == conv and scorer.items[-1]["responses"] == ["yo", "hey"]
    fn.close()


def test_reward_options_scale_withhold_and_split(voting):
    base, scorer = voting
    n0 = len(scorer.items)
    unit = reward_function(base, scale="unit", min_parsed=2, fallback=None, max_group=2)
    out = unit(prompts=["ok"] * 3 + ["half"] * 2 + ["garbage"], completions=["a", "bb", "ccc", "d", "ee", "f"])
    o = RewardOptions(scale="unit")
    assert out[:3] == pytest.approx([expected(c, o)[0] for c in ["a", "bb", "ccc"]])
    assert out[3:] == [None, None, None]  # 1 and 0 of 4 samples parsed < min_parsed=2: withheld, fallback None
    # max_group=2 split the 3-group (requests run concurrently, so the server sees them in any order)
    assert sorted((it["context"], len(it["responses"])) for it in scorer.items[n0:]) == [
        ("garbage", 1), ("half", 2), ("ok", 1), ("ok", 2)]
    assert [r.withheld for r in unit.last] == [False] * 3 + [True] * 3 and unit.last[3].num_valid == 1
    # The defaults reproduce the server's own /get_reward numbers.
    raw = reward_function(base)
    with RewardClient(base) as c:
        assert raw(prompts=["q", "q", "garbage"], completions=["x", "yyy", "z"]) == c.get_reward(
            ["qx", "qyyy", "garbagez"], ["q", "q", "garbage"]) == [expected("x")[0], expected("yyy")[0], 0.0]
    with pytest.raises(TypeError):
        reward_function(base, scael="unit")  # a typo is an error, not a silent default
    for fn in (unit, raw):
        fn.close()


# -- verl ------------------------------------------------------------------------------------------------------------
def test_verl_compute_score_as_verl_calls_it(voting, monkeypatch):
    """verl/workers/reward_manager/naive.py (volcengine/verl b178a3c) calls compute_score(data_source=,
    solution_str=, ground_truth=, extra_info=) per rollout; the reward loop (verl/experimental/reward_loop/
    reward_manager/naive.py) awaits it when it is a coroutine function; verl/workers/reward_manager/batch.py calls
    compute_score(data_sources=, solution_strs=, ground_truths=, extra_infos=) once per batch."""
    base, scorer = voting
    monkeypatch.setenv("SPCT_REWARD_URL", base)
    r = verl.compute_score(data_source="gsm8k", solution_str="abc", ground_truth="4",
                           extra_info={"question": "What is 2+2?", "index": 3})
    assert r["score"] == pytest.approx(expected("abc")[0]) and r["spct_num_valid"] == K and r["spct_withheld"] == 0
    assert scorer.items[-1]["context"] == "What is 2+2?" and scorer.items[-1]["responses"] == ["abc"]

    assert inspect.iscoroutinefunction(verl.compute_score_async)
    r = asyncio.run(verl.compute_score_async(data_source="x", solution_str="ab", ground_truth=None,
                                             extra_info={"prompt": [{"role": "user", "content": "Hi"}]},
                                             scale="centered"))
    assert r["score"] == pytest.approx(expected("ab", RewardOptions(scale="centered"))[0])

    n0 = len(scorer.items)
    infos = [{"question": q} for q in ["Q1", "Q2", "Q1", "Q2", "garbage"]]
    rs = verl.compute_score_batch(data_sources=["s"] * 5, solution_strs=["a", "bb", "ccc", "dddd", "e"],
                                  ground_truths=[None] * 5, extra_infos=infos)
    assert [x["score"] for x in rs] == pytest.approx([expected(c)[0] for c in ["a", "bb", "ccc", "dddd"]] + [0.0])
    assert sorted((it["context"], it["responses"]) for it in scorer.items[n0:]) == [
        ("Q1", ["a", "ccc"]), ("Q2", ["bb", "dddd"]), ("garbage", ["e"])]  # rollout.n siblings judged together
    assert math.isnan(rs[-1]["spct_uncertainty"]) and rs[-1]["spct_withheld"] == 1.0

    with pytest.raises(ValueError, match="not in extra_info"):
        verl.compute_score(data_source="s", solution_str="a", ground_truth=None, extra_info={"index": 1})
    with pytest.raises(ValueError, match="fallback=None"):
        verl.compute_score(data_source="s", solution_str="a", ground_truth=None, extra_info={"question": "q"},
                           fallback=None)
    monkeypatch.delenv("SPCT_REWARD_URL")
    r = verl.compute_score(data_source="s", solution_str="a", ground_truth=None,
                           extra_info={"question": "q", "spct_url": base})  # the URL may travel in extra_info
    assert r["score"] == pytest.approx(expected("a")[0])


def test_verl_against_spct_serve(grm, monkeypatch):
    monkeypatch.setenv("SPCT_REWARD_URL", grm)
    rs = verl.compute_score_batch(data_sources=["s"] * 2, solution_strs=["4", "5"], ground_truths=["4"] * 2,
                                  extra_infos=[{"question": "What is 2+2?"}] * 2)
    assert len(rs) == 2 and all(math.isfinite(r["score"]) and 0 <= r["spct_num_valid"] <= 2 for r in rs)


# -- tunix -----------------------------------------------------------------------------------------------------------
def test_tunix_reward_fn_as_tunix_calls_it(voting):
    """Mirrors SequenceRewardManager._compute_rewards (google/tunix c7d8950, tunix/rl/reward_manager.py L122-170):
    signature-driven kwargs, r = reward_fn(prompts=, completions=, **kwargs), np.array(r) into a float matrix,
    metrics named after reward_fn.__name__."""
    base, scorer = voting
    fn = tunix.reward_fn(base, min_parsed=K, fallback=None)
    prompts = ["P1", "P1", "half", "half"]
    completions = ["x", "yy", "zzz", "w"]
    kwargs = {"answer": ["a"] * 4, "mode": "train"}  # the batch's other columns + mode, as rl_learner passes them
    algo_config_params = {"num_generations": 2, "beta": 0.04}
    rewards = np.zeros((len(prompts), 1))
    for i, reward_fn in enumerate([fn]):
        extra = {n: algo_config_params[n] for n in inspect.signature(reward_fn).parameters
                 if n not in ("self", "prompts", "completions", "kwargs") and n in algo_config_params
                 and n not in kwargs}
        r = reward_fn(prompts=prompts, completions=completions, **{**kwargs, **extra})
        assert r is not None and len(r) == len(prompts)
        rewards[:, i] = np.array(r)
    name = f"rewards/{fn.__name__}"
    assert name == "rewards/spct_grm"
    assert rewards[:2, 0] == pytest.approx([expected("x")[0], expected("yy")[0]])
    assert np.isnan(rewards[2:, 0]).all()  # withheld with fallback=None: NaN, which tunix's nansum skips
    assert np.nansum(rewards, axis=1)[2:].tolist() == [0.0, 0.0]
    fn.close()


# -- OpenRLHF --------------------------------------------------------------------------------------------------------
def test_openrlhf_v090_batch_request_groups_by_prompt(grm):
    """openrlhf/utils/remote_rm_utils.py at tag v0.9.0, L10-32: request_api_wrapper posts
    {"query", "prompts", "labels"} with requests, Content-Type json, timeout 180, and reads ["rewards"]."""
    requests = pytest.importorskip("requests")
    prompts = ["<|user|>What is 2+2?<|assistant|>"] * 3 + ["<|user|>Name a colour.<|assistant|>"] * 3
    responses = ["4", "5", "four", "blue", "red", "a colour"]
    queries = [p + r for p, r in zip(prompts, responses)]
    labels = ["4"] * 3 + [""] * 3
    m0 = metrics(grm)
    data = openrlhf.request_body(queries, prompts, labels)
    assert data == {"query": queries, "prompts": prompts, "labels": labels}
    response = requests.post(url=f"{grm}/get_reward", json=data, headers={"Content-Type": "application/json"},
                             timeout=180)
    response.raise_for_status()
    rewards = response.json()["rewards"]
    m1 = metrics(grm)
    assert len(rewards) == 6 and all(math.isfinite(x) for x in rewards)
    assert m1["requests"]["ok"] - m0["requests"]["ok"] == 1
    new_batches = m1["batches"]["count"] - m0["batches"]["count"]
    # The 6 rollouts of 2 prompts reached the GRM as 2 items (one per prompt), in one sampler call.
    assert new_batches == 1 and m1["batches"]["recent_items"][-1] == 2


def test_openrlhf_v011_per_rollout_request(grm):
    """openrlhf/utils/agent.py at v0.11.0, SingleTurnAgentExecutor.execute (L287) and _fetch_rewards_via_http
    (L322-356): query = tokenizer.decode(prompt_ids + action_ids, skip_special_tokens=False), posted alone as
    {"query": [query], "prompts": [prompt], "labels": [label]} (aiohttp there; the same JSON body here)."""
    tok = byte_level_tokenizer()
    prompt = "What is 2+2? The answer is"
    prompt_token_ids = tok(text=prompt, add_special_tokens=False)["input_ids"]
    action_token_ids = tok(text=" 4.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    query = tok.decode(prompt_token_ids + action_token_ids, skip_special_tokens=False)
    assert query.startswith(prompt)  # the server's split rule holds for a byte-level tokenizer
    payload = {"query": [query], "prompts": [prompt], "labels": ["4"]}
    r = httpx.post(f"{grm}/get_reward", json=payload, timeout=180)
    r.raise_for_status()
    info = r.json()
    assert list(info) == ["rewards"] and len(info["rewards"]) == 1 and math.isfinite(info["rewards"][0])


def test_openrlhf_reward_func_loaded_as_openrlhf_loads_it(voting, monkeypatch):
    """`--remote_rm_url path.py`: OpenRLHF loads reward_func with importlib.util.spec_from_file_location (agent.py
    L193-199 at v0.11.0; remote_rm_utils.py L42-49 at v0.9.0) and calls reward_func(queries, prompts, labels)."""
    base, scorer = voting
    monkeypatch.setenv("SPCT_REWARD_URL", base)
    monkeypatch.setenv("SPCT_REWARD_SCALE", "centered")
    spec = importlib.util.spec_from_file_location("reward_func", openrlhf.__file__)
    reward_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reward_module)
    info = reward_module.reward_func(["Q: aa", "Q: b", "R: ccc"], ["Q: ", "Q: ", "R: "], ["", "", ""])
    opts = RewardOptions(scale="centered")
    assert info["rewards"] == pytest.approx([expected(c, opts)[0] for c in ["aa", "b", "ccc"]])
    assert info["scores"] == info["rewards"] and len(info["extra_logs"]["spct_uncertainty"]) == 3
    assert sorted((it["context"], it["responses"]) for it in scorer.items[-2:]) == [("Q: ", ["aa", "b"]),
                                                                                    ("R: ", ["ccc"])]
    with pytest.raises(ValueError, match=r"query\[0\]"):
        reward_module.reward_func(["X: a"], ["Q: "], [""])


def test_integrations_are_not_imported_by_serve():
    import pathlib

    serve = pathlib.Path(RewardClient.__module__.replace(".", "/")).parent
    root = pathlib.Path(__file__).resolve().parents[1]
    for path in (root / serve).glob("*.py"):
        assert "integrations" not in path.read_text(), path

