"""zcopy pools and buffers for NIXL (the NVIDIA Inference Xfer Library) agents.

Importable only where a NIXL wheel is installed (tested: `nixl-cu12==1.5.1`, which imports as
`nixl_cu12`; `nixl_cu13` and `nixl` are tried after it, untested); `import zcopy` never imports
this module.

A pool's whole region is registered with an agent once; every buffer of the pool, created or
sealed, is then inside registered memory, so moving it needs only a transfer descriptor:

    import zcopy, zcopy.nixl
    reg = zcopy.nixl.register_pool(agent, pool)       # one registration; reg.close() undoes it
    buf = pool.create("k", size)
    local = reg.xfer_descs([buf])                      # nixlXferDList over buf's bytes
    remote = zcopy.nixl.remote_xfer_descs(agent, peer_pairs)   # (address, length) from the peer
    handle = agent.initialize_xfer("READ", local, remote, peer_name)
    zcopy.nixl.wait(agent, handle, timeout=10)         # posts and polls, bounded
    buf.seal()

A descriptor is valid while its buffer is held and the registration is open. Registrations are
not thread-safe beyond what the agent is; close one before closing its pool.
"""

import time
import weakref

import numpy as np

from ._core import Buffer


def _import_nixl():
    errors = []
    for name in ("nixl_cu12", "nixl_cu13", "nixl"):
        try:
            module = __import__(name + "._api", fromlist=["nixl_agent"])
        except ImportError as e:
            errors.append("%s: %s" % (name, e))
            continue
        if hasattr(module, "nixl_agent"):
            return name, module
        errors.append("%s: no nixl_agent" % name)
    raise ImportError(
        "zcopy.nixl needs a NIXL wheel (pip install nixl-cu12; tested with 1.5.1): " + "; ".join(errors)
    )


def _version(package):
    from importlib import metadata

    for dist in (package.replace("_", "-"), "nixl"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


#: Name of the imported NIXL package ("nixl_cu12", "nixl_cu13" or "nixl") and its `_api` module.
package, api = _import_nixl()
#: The installed distribution's version (tested: 1.5.1).
version = _version(package)
nixl_agent = api.nixl_agent
nixl_agent_config = api.nixl_agent_config

MEM_TYPE = "DRAM"


def desc_array(items):
    """An N x 3 uint64 array of (address, length, device 0), one row per item: a zcopy Buffer
    (its `address` and `size`) or an (address, length) pair, e.g. received from a peer. This is
    the form `get_xfer_descs(..., "DRAM")` and `prep_xfer_dlist(..., "DRAM")` take, and it pickles
    small."""
    rows = []
    for item in items:
        if isinstance(item, Buffer):
            rows.append((item.address, item.size, 0))
        else:
            address, length = item
            rows.append((int(address), int(length), 0))
    out = np.zeros((len(rows), 3), dtype=np.uint64)
    if rows:
        out[:] = rows
    return out


def wait(agent, handle, timeout, post=True, notif=b""):
    """Posts `handle` (unless post=False) and polls it until NIXL says DONE. Raises RuntimeError
    when NIXL reports ERR and TimeoutError (naming the handle) after `timeout` seconds. Returns
    the seconds it took."""
    t0 = time.perf_counter()
    state = agent.transfer(handle, notif) if post else agent.check_xfer_state(handle)
    deadline = t0 + timeout
    while state == "PROC":
        if time.perf_counter() > deadline:
            raise TimeoutError("NIXL transfer %r still in progress after %.1f s" % (handle, timeout))
        state = agent.check_xfer_state(handle)
    if state != "DONE":
        raise RuntimeError("NIXL transfer %r failed: state %s" % (handle, state))
    return time.perf_counter() - t0


def _deregister(agent, descs, backends):
    try:
        agent.deregister_memory(descs, backends)
    except Exception:  # the agent is being torn down at exit: nothing left to undo
        pass


class PoolRegistration:
    """A pool's whole region registered with one NIXL agent. `close()` (idempotent, or the end of
    a `with` block) deregisters it; collection does too, as a fallback. Holds the agent, so the
    agent outlives it; it must not outlive the pool's mapping, so close it before the pool.
    Release the prepared lists and requests made over its buffers first: NIXL 1.5.1 still builds
    a request from a prepared list whose memory was deregistered, and fails only when posting it."""

    def __init__(self, agent, pool, backends=()):
        self.agent = agent
        self.region = pool.region()
        base, length = self.region
        self.backends = list(backends)
        self.descs = agent.register_memory([(base, length, 0, "")], MEM_TYPE, self.backends)
        self._finalizer = weakref.finalize(self, _deregister, agent, self.descs, self.backends)

    @property
    def closed(self):
        return not self._finalizer.alive

    def close(self):
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        base, length = self.region
        state = "closed" if self.closed else "open"
        return "<zcopy.nixl.PoolRegistration %#x + %d with agent %r, %s>" % (base, length, self.agent.name, state)

    def contains(self, address, length):
        base, size = self.region
        return base <= address and address + length <= base + size

    def desc_array(self, buffers):
        """`desc_array(buffers)` after checking every buffer lies in the registered region
        (ValueError names the first that does not: NIXL would refuse it at transfer time)."""
        if self.closed:
            raise ValueError("the registration of %#x + %d is closed" % self.region)
        arr = desc_array(buffers)
        base, size = self.region
        if len(arr):
            outside = (arr[:, 0] < base) | (arr[:, 0] + arr[:, 1] > base + size)
            if outside.any():
                i = int(np.argmax(outside))
                raise ValueError(
                    "descriptor %d (%#x + %d) is outside the registered region %#x + %d"
                    % (i, int(arr[i, 0]), int(arr[i, 1]), base, size)
                )
        return arr

    def xfer_descs(self, buffers):
        """A nixlXferDList over these buffers of the registered pool, in order."""
        return self.agent.get_xfer_descs(self.desc_array(buffers), MEM_TYPE)

    def prep_local(self, buffers):
        """A prepared local descriptor list over these buffers (`prep_xfer_dlist` with
        NIXL_INIT_AGENT): build it once, then `make_prepped_xfer` picks buffers by index."""
        return self.agent.prep_xfer_dlist("NIXL_INIT_AGENT", self.desc_array(buffers), MEM_TYPE, self.backends)


def register_pool(agent, pool, backends=()):
    """Registers `pool.region()` with `agent` (all backends that take DRAM, or those named) and
    returns the PoolRegistration that deregisters it."""
    return PoolRegistration(agent, pool, backends)


def remote_xfer_descs(agent, pairs):
    """A nixlXferDList over a peer's (address, length) pairs (or an N x 3 array from desc_array)."""
    arr = pairs if isinstance(pairs, np.ndarray) else desc_array(pairs)
    return agent.get_xfer_descs(arr, MEM_TYPE)


def prep_remote(agent, remote_agent, pairs, backends=()):
    """A prepared descriptor list over a peer's (address, length) pairs, for `make_prepped_xfer`."""
    arr = pairs if isinstance(pairs, np.ndarray) else desc_array(pairs)
    return agent.prep_xfer_dlist(remote_agent, arr, MEM_TYPE, list(backends))
