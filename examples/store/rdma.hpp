// rdma.hpp: the verbs side of the store's RDMA path, shared by the server and the client: one
// reliable-connected queue pair per store connection, brought up with the QpInfo both sides swap
// over the TCP connection (RDMA_CONNECT), and one-sided RDMA READ / WRITE posted from zcopy
// descriptors. libzcopy registers the pools; only the programs link -libverbs.
//
// Compiled only where <infiniband/verbs.h> is present (ZCS_HAVE_RDMA); elsewhere the store is
// TCP-only and says so when RDMA is asked for.

#ifndef ZCOPY_STORE_RDMA_HPP
#define ZCOPY_STORE_RDMA_HPP

#if defined(__has_include)
#if __has_include(<infiniband/verbs.h>) && !defined(ZCS_NO_RDMA)
#define ZCS_HAVE_RDMA 1
#endif
#endif

#include <cstdint>
#include <cstdlib>
#include <string>

#include "protocol.hpp"

namespace zcs {
namespace rdma {

/// The GID index to address the peer with: ZCOPY_RDMA_GID_INDEX, else RXE_GID_INDEX, else 1 (the
/// IPv4-mapped RoCE v2 GID on Soft-RoCE; on InfiniBand any valid index works).
inline int default_gid_index() {
    const char *g = std::getenv("ZCOPY_RDMA_GID_INDEX");
    if (g == nullptr) g = std::getenv("RXE_GID_INDEX");
    return g != nullptr ? std::atoi(g) : 1;
}

}  // namespace rdma
}  // namespace zcs

#ifdef ZCS_HAVE_RDMA

#include <infiniband/verbs.h>
#include <time.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <stdexcept>

namespace zcs {
namespace rdma {

/// One end of an RC connection: a CQ and a QP on a protection domain (a zcopy pool's, so that
/// the pool's keys are valid on it), port 1. Not copyable or movable: hold it by unique_ptr.
class Endpoint {
public:
    /// Creates the CQ and the QP and moves the QP to INIT. Throws std::runtime_error.
    Endpoint(ibv_pd *pd, int gid_index) : pd_(pd), gid_index_(gid_index) {
        if (pd == nullptr) throw std::runtime_error("no RDMA protection domain");
        try {
            cq_ = ibv_create_cq(pd->context, kDepth, nullptr, nullptr, 0);
            if (cq_ == nullptr) fail("ibv_create_cq");
            ibv_qp_init_attr init{};
            init.send_cq = cq_;
            init.recv_cq = cq_;
            init.cap.max_send_wr = kDepth;
            init.cap.max_recv_wr = 1;
            init.cap.max_send_sge = 1;
            init.cap.max_recv_sge = 1;
            init.qp_type = IBV_QPT_RC;
            qp_ = ibv_create_qp(pd, &init);
            if (qp_ == nullptr) fail("ibv_create_qp");
            ibv_port_attr port{};
            if (ibv_query_port(pd->context, 1, &port) != 0) fail("ibv_query_port");
            union ibv_gid gid{};
            if (ibv_query_gid(pd->context, 1, gid_index, &gid) != 0) {
                fail("ibv_query_gid(index " + std::to_string(gid_index) + ")");
            }
            static const uint8_t zero[16] = {};
            if (std::memcmp(gid.raw, zero, sizeof(zero)) == 0) {
                throw std::runtime_error("GID index " + std::to_string(gid_index) + " of " +
                                         ibv_get_device_name(pd->context->device) + " port 1 is empty");
            }
            local_.qp_num = qp_->qp_num;
            local_.psn = std::random_device()() & 0xFFFFFFu;
            local_.lid = port.lid;
            local_.mtu = static_cast<uint8_t>(port.active_mtu);
            std::memcpy(local_.gid, gid.raw, sizeof(local_.gid));
            ibv_qp_attr a{};
            a.qp_state = IBV_QPS_INIT;
            a.pkey_index = 0;
            a.port_num = 1;
            a.qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE;
            if (ibv_modify_qp(qp_, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS) != 0) {
                fail("ibv_modify_qp(INIT)");
            }
        } catch (...) {
            destroy();
            throw;
        }
    }
    Endpoint(const Endpoint &) = delete;
    Endpoint &operator=(const Endpoint &) = delete;
    /// Destroying the QP first stops the peer's one-sided operations on it at once.
    ~Endpoint() { destroy(); }

    const QpInfo &local() const noexcept { return local_; }
    std::string device() const { return ibv_get_device_name(pd_->context->device); }

    /// Moves the QP to RTR and RTS, connected to `peer`. Throws std::runtime_error.
    void connect(const QpInfo &peer) {
        ibv_qp_attr a{};
        a.qp_state = IBV_QPS_RTR;
        a.path_mtu = static_cast<ibv_mtu>(peer.mtu < local_.mtu ? peer.mtu : local_.mtu);
        a.dest_qp_num = peer.qp_num;
        a.rq_psn = peer.psn;
        a.max_dest_rd_atomic = 1;
        a.min_rnr_timer = 12;
        a.ah_attr.is_global = 1;
        std::memcpy(a.ah_attr.grh.dgid.raw, peer.gid, sizeof(peer.gid));
        a.ah_attr.grh.sgid_index = static_cast<uint8_t>(gid_index_);
        a.ah_attr.grh.hop_limit = 64;
        a.ah_attr.dlid = peer.lid;
        a.ah_attr.port_num = 1;
        if (ibv_modify_qp(qp_, &a,
                          IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                              IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER) != 0) {
            fail("ibv_modify_qp(RTR)");
        }
        a = ibv_qp_attr{};
        a.qp_state = IBV_QPS_RTS;
        a.timeout = 14;
        a.retry_cnt = 7;
        a.rnr_retry = 7;
        a.sq_psn = local_.psn;
        a.max_rd_atomic = 1;
        if (ibv_modify_qp(qp_, &a,
                          IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                              IBV_QP_MAX_QP_RD_ATOMIC) != 0) {
            fail("ibv_modify_qp(RTS)");
        }
    }

    /// RDMA READ (remote -> local) or WRITE (local -> remote) of `len` bytes, in work requests of
    /// at most 1 GiB, each waited for (at most `timeout_s` seconds). Throws std::runtime_error;
    /// after a failed work request the QP is in the error state and unusable.
    void transfer(ibv_wr_opcode op, uint64_t local_addr, uint32_t lkey, uint64_t remote_addr, uint32_t rkey, uint64_t len,
                  double timeout_s = 30.0) {
        constexpr uint64_t kChunk = 1ull << 30;
        for (uint64_t off = 0; off < len; off += kChunk) {
            const uint64_t n = len - off < kChunk ? len - off : kChunk;
            ibv_sge sge{};
            sge.addr = local_addr + off;
            sge.length = static_cast<uint32_t>(n);
            sge.lkey = lkey;
            ibv_send_wr wr{};
            wr.wr_id = ++next_wr_;
            wr.sg_list = &sge;
            wr.num_sge = 1;
            wr.opcode = op;
            wr.send_flags = IBV_SEND_SIGNALED;
            wr.wr.rdma.remote_addr = remote_addr + off;
            wr.wr.rdma.rkey = rkey;
            ibv_send_wr *bad = nullptr;
            if (int rc = ibv_post_send(qp_, &wr, &bad); rc != 0) {
                errno = rc;
                fail("ibv_post_send");
            }
            const double deadline = now() + timeout_s;
            ibv_wc wc{};
            for (;;) {
                const int got = ibv_poll_cq(cq_, 1, &wc);
                if (got < 0) throw std::runtime_error("ibv_poll_cq failed");
                if (got == 1) break;
                if (now() > deadline) throw std::runtime_error("no RDMA completion within " + std::to_string(timeout_s) + " s");
            }
            if (wc.status != IBV_WC_SUCCESS || wc.wr_id != next_wr_) {
                throw std::runtime_error(std::string(op == IBV_WR_RDMA_READ ? "RDMA READ" : "RDMA WRITE") +
                                         " failed: " + ibv_wc_status_str(wc.status));
            }
        }
    }

private:
    static constexpr int kDepth = 16;

    [[noreturn]] static void fail(const std::string &what) {
        throw std::runtime_error(what + ": " + std::strerror(errno));
    }
    static double now() {
        timespec ts{};
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
    }
    void destroy() noexcept {
        if (qp_ != nullptr) ibv_destroy_qp(qp_);
        if (cq_ != nullptr) ibv_destroy_cq(cq_);
        qp_ = nullptr;
        cq_ = nullptr;
    }

    ibv_pd *pd_;
    int gid_index_;
    ibv_cq *cq_ = nullptr;
    ibv_qp *qp_ = nullptr;
    QpInfo local_;
    uint64_t next_wr_ = 0;
};

}  // namespace rdma
}  // namespace zcs

#endif  // ZCS_HAVE_RDMA
#endif  // ZCOPY_STORE_RDMA_HPP
