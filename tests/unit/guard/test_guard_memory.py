"""The one-gather reader of sampled values, against per-tensor indexing, and its refusals.

The reader lays a numpy array over the address range of many CPU tensors and reads every
sampled coordinate at its address, so everything it must refuse is something that would make
an address wrong or outside a tensor's memory: a strided or resized tensor, another dtype, a
gradient replaced by a smaller one. Each is refused (the caller reads tensor by tensor), and
a tensor moved to new memory (``p.data = x``) is read where it now lives.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from trainwarden.guard import GuardConfig
from trainwarden.guard._memory import Memory
from trainwarden.guard._sampling import Sampler
from trainwarden.guard._update import ParamTable, UpdateCheck

pytestmark = pytest.mark.torch


def _memory(sizes: list[int], dtype: torch.dtype = torch.float32) -> Memory:
    storage = "int16" if dtype == torch.bfloat16 else str(dtype).removeprefix("torch.")
    return Memory(list(range(len(sizes))), len(sizes), sizes, dtype, storage)


def _coordinates(sizes: list[int], n: int, seed: int = 0) -> tuple[Any, Any]:
    gen = np.random.default_rng(seed)
    owner = np.sort(gen.integers(0, len(sizes), n))
    local = np.array([gen.integers(0, sizes[o]) for o in owner], dtype=np.int64)
    return owner, local


def _expected(tensors: list[Any], owner: Any, local: Any) -> Any:
    out = []
    for o, i in zip(owner.tolist(), local.tolist(), strict=True):
        t = tensors[o]
        if t is None:
            out.append(0)
            continue
        flat = t.detach().reshape(-1)
        if flat.dtype == torch.bfloat16:
            flat = flat.view(torch.int16)
        out.append(flat[i].item())
    return np.array(out)


def test_one_gather_reads_what_indexing_each_tensor_reads() -> None:
    sizes = [37 * 67, 67, 5, 4096, 1]
    weights = [torch.randn(n) for n in sizes]
    grads = [torch.randn(n) for n in sizes]
    grads[2] = None  # a parameter without a gradient reads as zeros
    memory = _memory(sizes)
    owner, local = _coordinates(sizes, 500)
    kinds = [memory.locate("param", weights), memory.locate("grad", grads, fresh=True)]
    assert all(k is not None for k in kinds)
    out = memory.read([k for k in kinds if k is not None], owner, local)
    assert out.shape == (2, 500)
    np.testing.assert_array_equal(out[0], _expected(weights, owner, local))
    np.testing.assert_array_equal(out[1], _expected(grads, owner, local))


def test_an_entry_without_a_tensor_never_reads_at_its_own_offsets() -> None:
    # The largest parameter has no state of this kind (never stepped, or a sparse state read
    # as absent): its coordinates go far past the small tensors that make up the span. Read
    # at its offsets from the span's start, they went past the span (an IndexError out of
    # the optimizer step, killing the job, under verify_async about one run in two) or, inside
    # it, between tensors, into memory no tensor owns.
    sizes = [4, 3, 100_000]
    buffer = torch.randn(7)  # the two small tensors side by side: the span is 7 elements
    state = [buffer[:4], buffer[4:], None]
    memory = _memory(sizes)
    owner = np.array([0, 1, 2, 2, 2], dtype=np.int64)
    local = np.array([3, 2, 99_999, 50_000, 5], dtype=np.int64)
    located = memory.locate("state:momentum_buffer", state)
    assert located is not None
    got = memory.read([located], owner, local)
    assert got[0].tolist() == pytest.approx(_expected(state, owner, local).tolist())
    assert got[0, 2:].tolist() == [0.0, 0.0, 0.0]


def test_only_the_entries_a_read_touches_are_validated() -> None:
    # A step's sample touches the large tensors and a few small ones: only those are
    # validated, so a tensor that cannot be read directly slows only the reads that touch it.
    sizes = [100, 100, 100]
    weights = [torch.randn(100), torch.randn(10, 10).t(), torch.randn(100)]  # 1 is strided
    memory = _memory(sizes)
    owner = np.array([0, 0, 2], dtype=np.int64)
    local = np.array([7, 99, 0], dtype=np.int64)
    located = memory.locate("param", weights, [0, 2])
    assert located is not None
    got = memory.read([located], owner, local)
    np.testing.assert_array_equal(got[0], _expected(weights, owner, local))
    assert memory.locate("param", weights, [0, 1]) is None
    assert memory.locate("param", weights, [2]) is not None  # a refusal is not remembered


def test_an_entry_that_moved_while_not_read_is_validated_again_before_it_is_read() -> None:
    # Entry 1 is validated, then its tensor is replaced by a smaller one and the old memory
    # freed while reads touch only entry 0: the first read that touches it again must see
    # the new tensor (and refuse it), never read the old address.
    sizes = [100, 100]
    weights = [torch.randn(100), torch.randn(100)]
    memory = _memory(sizes)
    assert memory.locate("param", weights, [0, 1]) is not None
    weights[1] = torch.randn(50)
    assert memory.locate("param", weights, [0]) is not None
    assert memory.locate("param", weights, [0, 1]) is None
    weights[1] = torch.randn(100)  # a tensor that fits again: read where it now lives
    located = memory.locate("param", weights, [1])
    assert located is not None
    owner = np.array([1, 1], dtype=np.int64)
    local = np.array([0, 99], dtype=np.int64)
    np.testing.assert_array_equal(
        memory.read([located], owner, local)[0], _expected(weights, owner, local)
    )


def test_a_tensor_shrunk_in_place_at_the_same_address_is_validated_again() -> None:
    # Same address, fewer elements (``set_`` on the same storage; or ``p.data = x`` landing
    # where the old memory was): reading the validated count would run past its memory.
    sizes = [100]
    weight = torch.randn(100)
    memory = _memory(sizes)
    assert memory.locate("param", [weight], [0]) is not None
    address = weight.data_ptr()
    weight.set_(weight.untyped_storage(), 0, (50,))
    assert weight.data_ptr() == address
    assert memory.locate("param", [weight], [0]) is None


def test_a_read_of_entries_without_tensors_reads_nothing() -> None:
    # A state kind that the touched entries lack (their parameters never stepped): zeros,
    # without reading any address, also when other entries have the kind.
    sizes = [100, 100, 100]
    params = [torch.randn(100) for _ in sizes]
    state = [torch.randn(100), None, None]
    memory = _memory(sizes)
    assert memory.locate("state:exp_avg", state, [1, 2]) is None  # nothing there to read
    assert memory.locate("state:exp_avg", state, [0]) is not None
    assert memory.locate("state:exp_avg", state, [1, 2]) is None
    # Read with a kind that has them: the state row is zeros, its addresses never used.
    kinds = [memory.locate("param", params, [1, 2]), memory.locate("state:exp_avg", state, [1])]
    assert kinds[1] is None
    kinds[1] = memory.locate("state:exp_avg", state, [0, 1])
    owner = np.array([1, 1, 2], dtype=np.int64)
    local = np.array([3, 4, 5], dtype=np.int64)
    assert all(k is not None for k in kinds)
    got = memory.read([k for k in kinds if k is not None], owner, local)
    np.testing.assert_array_equal(got[0], _expected(params, owner, local))
    assert got[1].tolist() == [0.0, 0.0, 0.0]


def test_bf16_is_read_as_its_bit_patterns() -> None:
    sizes = [300, 77]
    weights = [torch.randn(n).to(torch.bfloat16) for n in sizes]
    memory = _memory(sizes, torch.bfloat16)
    owner, local = _coordinates(sizes, 100)
    located = memory.locate("param", weights)
    assert located is not None
    out = memory.read([located], owner, local)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out[0], _expected(weights, owner, local))


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda t: t.reshape(10, 10).t(), id="strided"),
        pytest.param(lambda t: t.double(), id="another-dtype"),
        pytest.param(lambda t: t[:50], id="fewer-elements"),
        pytest.param(lambda t: torch.zeros(1).expand(100), id="expanded"),
        pytest.param(lambda t: t.neg().conj_physical()._neg_view(), id="negative-view"),
    ],
)
def test_tensors_that_cannot_be_read_at_their_address_are_refused(spoil: Any) -> None:
    sizes = [100, 100]
    weights = [torch.randn(100), spoil(torch.randn(100))]
    assert _memory(sizes).locate("param", weights) is None


def test_a_gradient_replaced_by_less_memory_is_refused() -> None:
    sizes = [100, 100]
    param = torch.nn.Parameter(torch.randn(100))
    param.grad = torch.randn(100)
    memory = _memory(sizes)
    other = torch.randn(100)
    assert memory.locate("grad", [param.grad, other], fresh=True) is not None
    param.grad.set_(torch.zeros(1))  # torch allows it: 1 element where 100 are read
    assert memory.locate("grad", [param.grad, other], fresh=True) is None
    param.grad = torch.randn(100)
    param.grad.data = param.grad.data.half()  # allowed too: half the bytes
    assert memory.locate("grad", [param.grad, other], fresh=True) is None


def test_a_resized_storage_is_never_read() -> None:
    sizes = [100]
    weight = torch.randn(100)
    memory = _memory(sizes)
    assert memory.locate("param", [weight]) is not None
    weight.untyped_storage().resize_(0)  # what sharding wrappers do to free memory
    assert memory.locate("param", [weight]) is None


def _check(model: torch.nn.Module, optimizer: Any) -> UpdateCheck:
    table = ParamTable.build(optimizer, {id(p): n for n, p in model.named_parameters()})
    check = UpdateCheck(
        optimizer,
        table,
        Sampler(b"memory-tests-secret-0123456789", k=256),
        GuardConfig(),
        rank=0,
        verify_updates=True,
        check_weights=True,
    )
    check.prepare()
    return check


def test_weights_moved_to_new_memory_are_read_where_they_now_live() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.Linear(30, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    check = _check(model, optimizer)
    memory = check._partitions[0].memory
    assert memory is not None
    gen = torch.Generator().manual_seed(1)
    findings: list[Any] = []
    moved_at = 5
    for step in range(1, 11):
        loss = model(torch.randn(8, 20, generator=gen)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        findings += check.before_step(step)
        optimizer.step()
        if step == moved_at:
            weight = model[0].weight
            old = weight.data_ptr()
            with torch.no_grad():
                weight.data = weight.data.clone()  # same values, new memory
            assert weight.data_ptr() != old
        if step == 8:
            # Tampering in the new memory after the step: seen, so the reads follow it.
            sample = check._samples[step]
            for entry, positions in sample.per_param:
                if check.table.entries[entry].param is model[0].weight:
                    with torch.no_grad():
                        model[0].weight.view(-1)[int(positions[0])] += 1.0
        findings += check.after_step(step, next_step=step + 1).findings
        (result,) = check.collect(step)
        findings += result.findings
    assert [f.step for f in findings if f.rule_id == "guard.update"] == [8]
    assert not [f for f in findings if f.step != 8]
    # Read by the one gather, at the weight's new address.
    located = memory.locate("param", check._param_tensors())
    assert located is not None
    entry = next(i for i, e in enumerate(check.table.entries) if e.param is model[0].weight)
    assert int(located.elements[entry]) * 4 == model[0].weight.data_ptr()
