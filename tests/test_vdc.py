"""VDC task and judge back-ends: a local chat-completions server, reply parsing, a tiny local judge."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.errors import UserError
from tasks.judges import JudgeError, LocalJudge, OpenAIJudge, make_judge
from tasks.vdc import CAPTION_TYPES, NO_JUDGE, VDC, compare_messages, parse_judgement, qa_messages


# --- a deterministic chat-completions server -------------------------------------------
def fake_reply(messages: list[dict]) -> str:
    """QA prompts: answer with the whole description. Comparison prompts: "yes", 4 when the
    predicted answer contains the correct answer, else "no", 1; a question containing
    BROKEN gets prose with no verdict."""
    user = messages[-1]["content"]
    if "Correct Answer:" in user:
        question = re.search(r"Question: (.*)\n", user).group(1)
        correct = re.search(r"Correct Answer: (.*)\n", user).group(1)
        predicted = re.search(r"Predicted Answer: (.*?)\n\n", user, re.S).group(1)
        if "BROKEN" in question:
            return "I would rather not say."
        if correct.lower() in predicted.lower():
            return "Here you go:\n```python\n{'pred': 'yes', 'score': 4}\n```"
        return '{"pred": "no", "score": 1}'
    return re.search(r"Description: (.*?)\nQuestion: ", user, re.S).group(1)


class FakeServer:
    """An OpenAI-compatible server on 127.0.0.1 (port 0) that can fail or stall first."""

    def __init__(self, fail_first: int = 0, status: int = 500, delay: float = 0.0):
        self.fail_first, self.status, self.delay = fail_first, status, delay
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                    attempt = len(server.bodies)
                if server.delay:
                    time.sleep(server.delay)
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                if attempt <= server.fail_first:
                    return self._send(server.status, {"error": "overloaded"})
                content = fake_reply(body["messages"])
                self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with FakeServer() as srv:
        yield srv


def judge_for(srv: FakeServer, **kw) -> OpenAIJudge:
    kw = {"retries": 2, "backoff": 0.001, "timeout": 5, **kw}
    return OpenAIJudge(srv.url, "tiny-judge", **kw)


# --- a VDC directory -------------------------------------------------------------------
QA = {
    "v1": {
        "short": [("What animal is it?", "dog"), ("What colour is the dog?", "brown"), ("BROKEN question?", "x")],
        "detailed": [("Where does it play?", "park"), ("What does it chase?", "ball")],
    },
    "v2": {
        "short": [("What animal is it?", "cat")],
        "detailed": [("Which room?", "kitchen"), ("What animal?", "cat")],
    },
}
PREDICTIONS = {
    "v1/short": "A brown dog runs.",
    "v1/detailed": "A dog plays in a park.",
    "v2/short": "  A cat sleeps.\n",
    "v2/detailed": "A dog in a garden.",
}


def write_vdc(root, rows=None) -> str:
    if rows is None:
        rows = []
        for vid, per_type in QA.items():
            captions = {}
            for ctype in CAPTION_TYPES:
                pairs = per_type.get(ctype, [("What is shown?", "something")])
                captions[ctype] = {"caption": f"reference {ctype} caption of {vid}",
                                   "qa": [{"question": q, "answer": a} for q, a in pairs]}
            rows.append({"video_id": vid, "video": f"videos/{vid}.mp4", "captions": captions})
    path = root / "vdc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(root)


# --- documents -------------------------------------------------------------------------
def test_docs_one_per_video_and_caption_type(tmp_path):
    task = VDC(write_vdc(tmp_path))
    docs = task.docs()
    assert len(docs) == 2 * len(CAPTION_TYPES)
    assert [d.id for d in docs[:5]] == [f"v1/{t}" for t in CAPTION_TYPES]
    d = docs[0]
    assert d.video == str(tmp_path / "videos" / "v1.mp4")
    assert d.fields == {"caption_type": "short"}
    assert d.target["caption"] == "reference short caption of v1"
    assert d.target["qa"][0] == {"question": "What animal is it?", "answer": "dog"}
    assert "one sentence" in d.prompt
    assert "camera" in docs[4].prompt
    assert len({d.prompt for d in docs[:5]}) == 5
    assert VDC.max_new_tokens_for(docs[0]) == 64
    assert VDC.max_new_tokens_for(docs[1]) == task.max_new_tokens == 512


def test_docs_caption_type_filter(tmp_path):
    docs = VDC(write_vdc(tmp_path), caption_types=["camera", "short"]).docs()
    assert [d.id for d in docs] == ["v1/camera", "v1/short", "v2/camera", "v2/short"]
    with pytest.raises(UserError, match="unknown vdc caption type 'colour'"):
        VDC(str(tmp_path), caption_types=["colour"])


def test_docs_missing_file_and_fields(tmp_path):
    with pytest.raises(UserError, match="vdc.jsonl"):
        VDC(str(tmp_path)).docs()
    write_vdc(tmp_path, [{"video": "videos/a.mp4", "captions": {}}])
    with pytest.raises(UserError, match=r":1: missing field 'video_id'"):
        VDC(str(tmp_path)).docs()
    write_vdc(tmp_path, [{"video_id": "a", "video": "videos/a.mp4",
                          "captions": {"short": {"caption": "c", "qa": []}}}])
    with pytest.raises(UserError, match=r"'captions.detailed'"):
        VDC(str(tmp_path)).docs()
    assert len(VDC(str(tmp_path), caption_types=["short"]).docs()) == 1
    write_vdc(tmp_path, [{"video_id": "a", "video": "videos/a.mp4", "captions": {"short": {"caption": "c"}}}])
    with pytest.raises(UserError, match=r"'captions.short.qa'"):
        VDC(str(tmp_path), caption_types=["short"]).docs()
    (tmp_path / "vdc.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match=r":1: not valid JSON"):
        VDC(str(tmp_path)).docs()


# --- OpenAIJudge end to end ------------------------------------------------------------
def test_openai_judge_end_to_end(server):
    judge = judge_for(server, api_key="secret-key")
    assert judge.name == f"openai:{server.url}#tiny-judge"
    assert judge.complete(qa_messages("A red car.", "What colour?")) == "A red car."
    reply = judge.complete(compare_messages("What colour?", "red", "A red car."))
    assert parse_judgement(reply) == {"pred": "yes", "score": 4.0}
    body = server.bodies[0]
    assert body["model"] == "tiny-judge" and body["temperature"] == 0 and body["max_tokens"] > 0
    assert body["messages"][0]["role"] == "system"
    assert server.headers[0]["Authorization"] == "Bearer secret-key"


def test_compare_prompt_asks_for_a_python_dict():
    text = compare_messages("q", "a", "p")[-1]["content"]
    assert "'pred'" in text and "'score'" in text and "Python dictionary" in text
    assert "{'pred': 'yes', 'score': 4}" in text


def test_retries_then_succeeds():
    with FakeServer(fail_first=2) as srv:
        assert judge_for(srv, retries=2).complete(qa_messages("cap", "q")) == "cap"
        assert len(srv.bodies) == 3


def test_retries_exhausted_raises():
    with FakeServer(fail_first=5, status=503) as srv:
        with pytest.raises(JudgeError, match=r"HTTP 503.*after 2 attempts"):
            judge_for(srv, retries=1).complete(qa_messages("cap", "q"))
        assert len(srv.bodies) == 2


def test_client_error_is_not_retried():
    with FakeServer(fail_first=5, status=400) as srv:
        with pytest.raises(JudgeError, match="HTTP 400"):
            judge_for(srv).complete(qa_messages("cap", "q"))
        assert len(srv.bodies) == 1


def closed_port_url() -> str:
    """A loopback URL on a port nothing listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/v1"


def test_unreachable_port_raises_after_retries():
    url = closed_port_url()
    t0 = time.perf_counter()
    with pytest.raises(JudgeError) as info:
        OpenAIJudge(url, "m", retries=2, backoff=0.001, timeout=2).complete([{"role": "user", "content": "hi"}])
    message = str(info.value)
    assert url in message and "cannot connect" in message and "3 attempts" in message
    assert "\n" not in message
    assert time.perf_counter() - t0 < 5


def test_timeout_is_retried_then_raises():
    with FakeServer(delay=0.5) as srv:
        with pytest.raises(JudgeError, match="no reply within"):
            judge_for(srv, retries=1, timeout=0.1).complete(qa_messages("cap", "q"))
        assert len(srv.bodies) == 2


# --- reply parsing ---------------------------------------------------------------------
@pytest.mark.parametrize("reply, expected", [
    ("{'pred': 'yes', 'score': 4}", ("yes", 4.0)),
    ('{"pred": "no", "score": 0}', ("no", 0.0)),
    ("```python\n{'pred': 'yes', 'score': 5}\n```", ("yes", 5.0)),
    ("```\n{\"pred\": \"no\", \"score\": 2}\n```", ("no", 2.0)),
    ("Sure! My evaluation is {'pred': 'Yes', 'score': 3} based on the answer.", ("yes", 3.0)),
    ("{'pred': 'YES', 'score': '3'}", ("yes", 3.0)),
    ("{'pred': 'no', 'score': 2.5}", ("no", 2.5)),
    ("{'Pred': 'No.', 'Score': 1}", ("no", 1.0)),
    ("{pred: yes, score: 4}", ("yes", 4.0)),
    ("pred: yes\nscore: 4", ("yes", 4.0)),
    ("{'pred': True, 'score': 4}", ("yes", 4.0)),
])
def test_parse_judgement(reply, expected):
    got = parse_judgement(reply)
    assert (got["pred"], got["score"]) == expected


@pytest.mark.parametrize("reply, reason", [
    ("{'pred': 'yes'}", "no score"),
    ("The answers match.", "no pred"),
    ("{'pred': 'maybe', 'score': 3}", "not yes or no"),
    ("{'pred': 'yes', 'score': 'high'}", "not a number"),
    ("{'pred': 'yes', 'score': 9}", "outside 0-5"),
    ("", "no pred"),
])
def test_parse_judgement_errors(reply, reason):
    with pytest.raises(JudgeError, match=reason):
        parse_judgement(reply)


# --- scoring ---------------------------------------------------------------------------
def score_all(task: VDC):
    docs = task.docs()
    scores = [task.score(d, task.parse(PREDICTIONS[d.id])) for d in docs]
    return docs, scores


@pytest.mark.parametrize("workers", [1, 4])
def test_score_and_aggregate_hand_checked(tmp_path, server, workers):
    task = VDC(write_vdc(tmp_path), judge=judge_for(server), caption_types=["short", "detailed"], workers=workers)
    docs, scores = score_all(task)
    by_id = dict(zip([d.id for d in docs], scores))
    # v1/short: dog yes 4, brown yes 4, BROKEN -> judge error
    assert by_id["v1/short"] == {"accuracy": 100.0, "score": 4.0, "judged": 2, "judge_errors": 1}
    # v1/detailed: park yes 4, ball no 1
    assert by_id["v1/detailed"] == {"accuracy": 50.0, "score": 2.5, "judged": 2, "judge_errors": 0}
    assert by_id["v2/short"] == {"accuracy": 100.0, "score": 4.0, "judged": 1, "judge_errors": 0}
    assert by_id["v2/detailed"] == {"accuracy": 0.0, "score": 1.0, "judged": 2, "judge_errors": 0}
    metrics = task.aggregate(docs, scores)
    assert metrics == {
        "accuracy": 62.5, "score": 2.875,
        "accuracy/caption_type/short": 100.0, "score/caption_type/short": 4.0,
        "accuracy/caption_type/detailed": 25.0, "score/caption_type/detailed": 1.75,
        "n": 4, "n_total": 4, "judge_errors": 1, "judge": f"openai:{server.url}#tiny-judge",
    }
    # The predicted caption (stripped) is what the judge answers from.
    qa_prompts = [b["messages"][-1]["content"] for b in server.bodies if "Description:" in b["messages"][-1]["content"]]
    assert any("Description: A cat sleeps.\nQuestion:" in p for p in qa_prompts)


def test_doc_with_only_judge_errors_is_not_scored(tmp_path, server):
    rows = [{"video_id": "z", "video": "videos/z.mp4",
             "captions": {"short": {"caption": "c", "qa": [{"question": "BROKEN?", "answer": "a"}]}}}]
    task = VDC(write_vdc(tmp_path, rows), judge=judge_for(server), caption_types=["short"])
    docs = task.docs()
    scores = [task.score(docs[0], "anything")]
    assert scores[0] == {"accuracy": None, "score": None, "judged": 0, "judge_errors": 1}
    metrics = task.aggregate(docs, scores)
    assert metrics["n"] == 0 and metrics["n_total"] == 1 and metrics["judge_errors"] == 1
    assert metrics["accuracy"] is None and metrics["accuracy/caption_type/short"] is None


def test_unreachable_judge_counts_errors_not_crash(tmp_path):
    task = VDC(write_vdc(tmp_path), caption_types=["short"],
               judge=OpenAIJudge(closed_port_url(), "m", retries=0, timeout=1))
    doc = task.docs()[0]
    assert task.score(doc, "a dog") == {"accuracy": None, "score": None, "judged": 0, "judge_errors": 3}


def test_score_without_judge(tmp_path):
    task = VDC(write_vdc(tmp_path))
    with pytest.raises(UserError) as info:
        task.score(task.docs()[0], "a caption")
    assert str(info.value) == NO_JUDGE
    assert task.aggregate([], [])["judge"] is None


# --- make_judge ------------------------------------------------------------------------
def test_make_judge_openai():
    judge = make_judge("openai:http://127.0.0.1:8000/v1/#llama-3.1-8b")
    assert isinstance(judge, OpenAIJudge)
    assert judge.url == "http://127.0.0.1:8000/v1" and judge.model == "llama-3.1-8b"
    assert judge.name == "openai:http://127.0.0.1:8000/v1#llama-3.1-8b"


@pytest.mark.parametrize("spec", [
    "", "openai", "openai:", "openai:http://127.0.0.1:8000/v1", "openai:http://host/v1#",
    "openai:ftp://host/v1#m", "gpt4:http://host#m", "local:/no/such/judge/dir",
])
def test_make_judge_bad_specs(spec):
    with pytest.raises(UserError):
        make_judge(spec)


# --- LocalJudge with a tiny random-weight Llama --------------------------------------
@pytest.fixture(scope="module")
def tiny_judge_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<pad>", "<eos>", "<bos>", "system", "user", "assistant", ":", "{", "}",
             "'pred':", "'score':", "'yes',", "'no',", "4", "a", "dog", "the", "What", "animal?"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
                "{% if add_generation_prompt %}assistant : {% endif %}")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   eos_token="<eos>", bos_token="<bos>", chat_template=template)
    path = tmp_path_factory.mktemp("tiny-judge")
    fast.save_pretrained(path)
    config = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                         pad_token_id=1, eos_token_id=2, bos_token_id=3)
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


def test_local_judge_generates(tiny_judge_dir):
    judge = make_judge(f"local:{tiny_judge_dir}")
    assert isinstance(judge, LocalJudge)
    assert judge.name.startswith("local:tiny-judge")
    out = judge.complete([{"role": "user", "content": "What animal? a dog"}])
    assert isinstance(out, str)
    assert out == judge.complete([{"role": "user", "content": "What animal? a dog"}])  # greedy


def test_local_judge_in_vdc_counts_unparseable_replies(tmp_path, tiny_judge_dir):
    judge = LocalJudge(tiny_judge_dir, max_new_tokens=4)
    task = VDC(write_vdc(tmp_path), judge=judge, caption_types=["short"])
    doc = task.docs()[0]
    result = task.score(doc, "a dog")
    assert result["judged"] + result["judge_errors"] == len(doc.target["qa"])
    assert task.aggregate([doc], [result])["judge"] == judge.name


def test_local_judge_missing_dir(tmp_path):
    with pytest.raises(UserError, match="not found"):
        LocalJudge(str(tmp_path / "absent"))
