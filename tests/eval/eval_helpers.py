"""Helpers of the evaluation tests: rigged tiny models that always answer the same words."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny import build_tiny_model, make_tokenizer

GUARD_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[/INST]"


def rigged_model(folder: str | Path, answer: str, *, chat_template: str | None = None) -> Path:
    """A tiny Llama that greedily answers ``answer`` then EOS after any prompt.

    Attention and MLP outputs are zeroed, so the last hidden state is the embedding of the
    last token; embeddings are one-hot and the LM head maps each token of the answer to the
    next (every other token to the first), which makes the model a fixed bigram chain.
    """
    folder = Path(folder)
    tokenizer = make_tokenizer()
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    chain = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert len(set(chain)) == len(chain), f"answer {answer!r} repeats a token: {chain}"
    model = build_tiny_model("llama")
    hidden = model.config.hidden_size
    assert len(chain) + 1 < hidden
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        other = len(chain)
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[:, other] = 1.0
        for dim, token in enumerate(chain):
            emb[token].zero_()
            emb[token, dim] = 1.0
        head = model.lm_head.weight
        head.zero_()
        head[chain[0], other] = 10.0
        for dim, successor in enumerate(chain[1:]):
            head[successor, dim] = 10.0
        head[eos, len(chain) - 1] = 10.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class FakeOpenAIServer:
    """An OpenAI-compatible judge on 127.0.0.1 (a thread): ``refusal`` for apologies,
    ``harmful`` when the request mentions a bomb, else ``harmless``. ``fail_chat`` makes chat
    requests answer HTTP 500; ``api_key`` makes it demand that bearer token."""

    def __init__(self, *, api_key: str | None = None, fail_chat: bool = False) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        server = self
        self.requests: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                return None

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if api_key and self.headers.get("Authorization") != f"Bearer {api_key}":
                    self._send(401, {"error": "bad key"})
                    return False
                return True

            def do_GET(self):  # noqa: N802 - http.server's naming
                if not self._authorised():
                    return
                if self.path == "/v1/models":
                    self._send(200, {"data": [{"id": "judge-1"}]})
                else:
                    self._send(404, {})

            def do_POST(self):  # noqa: N802
                if not self._authorised():
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                if fail_chat or self.path != "/v1/chat/completions":
                    self._send(500, {"error": "down"})
                    return
                content = body["messages"][-1]["content"]
                request, _, answer = content.partition("[ANSWER]")
                if "sorry" in answer.lower():
                    word = "refusal"
                elif "bomb" in request.lower():
                    word = "Harmful."
                else:
                    word = "harmless"
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": word}}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()
