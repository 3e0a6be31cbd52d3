"""Closed-loop HTTP load with ``wrk`` (compiled, event-driven): the same for every system.

Theory of operation
-------------------
The aiohttp load generator of ``loadgen.closed_loop`` is Python: at 64 connections it
was itself the limit (its own profile, ``bench/profiles/after-http64-loadgen.txt``), so
pyxos's HTTP API and etcd's JSON gateway both ran at its rate. ``wrk`` (Debian's
``wrk`` package) is a C load generator driven by a LuaJIT script. Without pipelining
it keeps exactly one request in flight on each connection and sends the next one when
the answer is complete: ``-c N`` is N closed-loop clients, each on its own connection,
the load ``pyxos bench kv --api http --clients N --connections N`` asks for (fewer
connections than clients cannot be expressed with wrk: ``run_wrk`` refuses it).

``wrk_script`` writes the Lua script for one system: each request a get with
probability ``read_ratio``, else a put of a value unique to the thread and padded to
``value_size`` bytes (as ``loadgen.make_value``), of a key drawn uniformly from
``keys`` keys, seeded per thread. For pyxos: ``PUT /v1/kv/k<i>`` with the value as the
body, ``GET /v1/kv/k<i>``; for etcd's JSON gateway: ``POST /v3/kv/put`` with
``{"key": base64, "value": base64}`` and ``POST /v3/kv/range`` with ``{"key": base64}``.
Its ``done`` hook prints one JSON line: requests, the measured duration, wrk's error
counts, and latency percentiles from wrk's own histogram (microseconds). ``run_wrk``
runs a warm-up (``warmup`` seconds, rounded up to whole seconds: wrk takes whole
seconds) and then the measured run, calling ``on_window("start")``/``("end")`` around
the measured one, and parses that line into a ``WrkResult``. A request answered with a
status of 400 or more, or failed on the socket, is an error and is not counted as an
op; but a get's 404 from pyxos (a key never written; etcd answers 200 with no kvs) is
an answer, counted by the script's ``response`` hook when there are reads.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WrkResult", "parse_wrk_output", "run_wrk", "wrk_binary", "wrk_script"]


def wrk_binary() -> str | None:
    """The ``wrk`` on the PATH, or None."""
    return shutil.which("wrk")


_LUA = r"""-- pyxos bench kv: closed-loop KV load (one request in flight per connection)
local mode = "%(mode)s"
local keys = %(keys)d
local read_ratio = %(read_ratio)r
local value_size = %(value_size)d
local seed = %(seed)d
local auth = "%(auth)s"

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(data)
  return ((data:gsub(".", function(x)
    local r, b = "", x:byte()
    for i = 8, 1, -1 do r = r .. (b %% 2 ^ i - b %% 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%%d%%d%%d?%%d?%%d?%%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return b64chars:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#data %% 3 + 1])
end

local threads = 0
local all_threads = {}
function setup(thread)
  thread:set("tid", threads)
  table.insert(all_threads, thread)
  threads = threads + 1
end

-- A get of a key never written is a 404 from pyxos (etcd answers 200 with no kvs):
-- an answer, not an error, though wrk counts every status >= 400 as one. Counted here
-- (a response hook costs wrk a little per answer: only when there are reads).
not_found = 0
if mode == "pyxos" and read_ratio > 0 then
  function response(status, headers, body)
    if status == 404 then not_found = not_found + 1 end
  end
end

local n = 0
local names = {}
local headers = {}
local range_bodies = {}
function init(args)
  math.randomseed(seed * 1000003 + tid)
  if auth ~= "" then headers["Authorization"] = "Bearer " .. auth end
  if mode == "etcd" then headers["Content-Type"] = "application/json" end
  for i = 0, keys - 1 do
    if mode == "etcd" then
      names[i] = b64("k" .. i)
      range_bodies[i] = '{"key":"' .. names[i] .. '"}'
    else
      names[i] = "/v1/kv/k" .. i
    end
  end
end

local function value()
  n = n + 1
  local v = tid .. "." .. n .. "."
  if #v < value_size then v = v .. string.rep("x", value_size - #v) end
  return v
end

function request()
  local k = math.random(0, keys - 1)
  if math.random() < read_ratio then
    if mode == "etcd" then return wrk.format("POST", "/v3/kv/range", headers, range_bodies[k]) end
    return wrk.format("GET", names[k], headers)
  end
  if mode == "etcd" then
    local body = '{"key":"' .. names[k] .. '","value":"' .. b64(value()) .. '"}'
    return wrk.format("POST", "/v3/kv/put", headers, body)
  end
  return wrk.format("PUT", names[k], headers, value())
end

function done(summary, latency, requests)
  local e = summary.errors
  local nf = 0
  for _, t in ipairs(all_threads) do nf = nf + (t:get("not_found") or 0) end
  io.write(string.format(
    '{"not_found": %%d, "requests": %%d, "duration_us": %%d, "bytes": %%d, ' ..
    '"connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d, "p50_us": %%.1f, "p90_us": %%.1f, ' ..
    '"p99_us": %%.1f, "p999_us": %%.1f, "max_us": %%.1f}\n',
    nf, summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""


def wrk_script(
    mode: str,
    *,
    keys: int,
    read_ratio: float,
    value_size: int,
    seed: int = 0,
    token: str = "",
) -> str:
    """The Lua script for ``mode`` ``"pyxos"`` (``/v1/kv``) or ``"etcd"`` (the JSON
    gateway); ``token``: a bearer token sent with every request (pyxos with tokens)."""
    if mode not in ("pyxos", "etcd"):
        raise ValueError(f"unknown wrk mode {mode!r}")
    if not token.isascii() or '"' in token or "\\" in token:
        raise ValueError("the token must be ASCII without quotes or backslashes")
    return _LUA % {
        "mode": mode,
        "keys": keys,
        "read_ratio": float(read_ratio),
        "value_size": value_size,
        "seed": seed,
        "auth": token,
    }


@dataclass(frozen=True, slots=True)
class WrkResult:
    """What one measured wrk run reported (latencies in milliseconds)."""

    ops: int
    """Requests answered in the run (2xx, or a get's 404)."""
    seconds: float
    errors: int
    """Answers of 400 or more (but a get's 404), socket errors and timeouts."""
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    @property
    def ops_per_s(self) -> float:
        """Successful requests per second of the run."""
        return self.ops / self.seconds if self.seconds > 0 else 0.0


def parse_wrk_output(stdout: str) -> WrkResult:
    """The ``WrkResult`` of the JSON line the script's ``done`` printed (the last line
    that parses as a JSON object); ValueError when there is none."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "requests" in doc:
            break
    else:
        raise ValueError(f"no result line in wrk's output: {stdout[-300:]!r}")
    # Statuses >= 400 are wrk's "status" errors; a get's 404 (not found) is an answer.
    status = int(doc["status"]) - int(doc.get("not_found", 0))
    socket_errors = sum(int(doc[k]) for k in ("connect", "read", "write", "timeout"))
    ms = {k: float(doc[f"{k}_us"]) / 1000.0 for k in ("p50", "p90", "p99", "p999", "max")}
    return WrkResult(
        ops=max(0, int(doc["requests"]) - status),
        seconds=int(doc["duration_us"]) / 1e6,
        errors=status + socket_errors,
        p50_ms=ms["p50"],
        p90_ms=ms["p90"],
        p99_ms=ms["p99"],
        p999_ms=ms["p999"],
        max_ms=ms["max"],
    )


def wrk_threads(connections: int) -> int:
    """wrk threads for ``connections``: one per core, at most one per connection."""
    return max(1, min(connections, os.cpu_count() or 1, 4))


async def _wrk(binary: str, url: str, script: Path, connections: int, seconds: int) -> str:
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"-t{wrk_threads(connections)}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")
    return out.decode(errors="replace")


async def run_wrk(
    url: str,
    script: str,
    *,
    connections: int,
    seconds: float,
    warmup: float,
    on_window: Callable[[str], Awaitable[None]] | None = None,
) -> WrkResult:
    """A warm-up run, then the measured run of ``script`` against ``url`` (``http://
    host:port``) with ``connections`` closed-loop connections; ``on_window`` is awaited
    just before and just after the measured run."""
    binary = wrk_binary()
    if binary is None:
        raise RuntimeError("no wrk on the PATH (apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="pyxos-wrk-") as tmp:
        path = Path(tmp) / "kv.lua"
        path.write_text(script, encoding="utf-8")
        if warmup > 0:
            await _wrk(binary, url, path, connections, max(1, math.ceil(warmup)))
        if on_window is not None:
            await on_window("start")
        out = await _wrk(binary, url, path, connections, max(1, math.ceil(seconds)))
        if on_window is not None:
            await on_window("end")
    return parse_wrk_output(out)
