/* Helpers for the RDMA tests and benchmark: a reliable-connected queue pair between two
 * protection domains on one device (loopback through the NIC), and RDMA READ/WRITE posted with
 * nothing but zcopy descriptors. Needs <infiniband/verbs.h> (libibverbs-dev) and a device:
 * ZCOPY_RDMA_DEVICE (default: RXE_DEV, else rxe0), ZCOPY_RDMA_GID_INDEX (default: RXE_GID_INDEX,
 * else 1). */

#ifndef ZCOPY_RDMA_UTIL_H
#define ZCOPY_RDMA_UTIL_H

#include <infiniband/verbs.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "zcopy.h"

static inline const char *rdma_device_name(void) {
    const char *d = getenv("ZCOPY_RDMA_DEVICE");
    if (d == NULL) d = getenv("RXE_DEV");
    return d != NULL ? d : "rxe0";
}

static inline int rdma_gid_index(void) {
    const char *g = getenv("ZCOPY_RDMA_GID_INDEX");
    if (g == NULL) g = getenv("RXE_GID_INDEX");
    return g != NULL ? atoi(g) : 1;
}

/* One end of a connection: its PD's context, a CQ and an RC QP. */
typedef struct rdma_end {
    struct ibv_pd *pd;
    struct ibv_cq *cq;
    struct ibv_qp *qp;
    union ibv_gid gid;
    uint16_t lid;
} rdma_end;

static inline bool rdma_end_init(rdma_end *e, struct ibv_pd *pd) {
    memset(e, 0, sizeof *e);
    e->pd = pd;
    e->cq = ibv_create_cq(pd->context, 16, NULL, NULL, 0);
    if (e->cq == NULL) {
        perror("ibv_create_cq");
        return false;
    }
    struct ibv_qp_init_attr init = {
        .send_cq = e->cq,
        .recv_cq = e->cq,
        .cap = { .max_send_wr = 16, .max_recv_wr = 16, .max_send_sge = 1, .max_recv_sge = 1 },
        .qp_type = IBV_QPT_RC,
    };
    e->qp = ibv_create_qp(pd, &init);
    if (e->qp == NULL) {
        perror("ibv_create_qp");
        return false;
    }
    struct ibv_port_attr port;
    if (ibv_query_port(pd->context, 1, &port) != 0 || ibv_query_gid(pd->context, 1, rdma_gid_index(), &e->gid) != 0) {
        perror("ibv_query_port/gid");
        return false;
    }
    e->lid = port.lid;
    struct ibv_qp_attr a = {
        .qp_state = IBV_QPS_INIT,
        .pkey_index = 0,
        .port_num = 1,
        .qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE,
    };
    if (ibv_modify_qp(e->qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS) != 0) {
        perror("ibv_modify_qp(INIT)");
        return false;
    }
    return true;
}

/* What a peer needs to connect to an end, plain bytes that can cross a pipe to another process. */
typedef struct rdma_end_addr {
    union ibv_gid gid;
    uint32_t qp_num;
    uint16_t lid;
} rdma_end_addr;

static inline rdma_end_addr rdma_end_address(const rdma_end *e) {
    rdma_end_addr a;
    memset(&a, 0, sizeof a);
    a.gid = e->gid;
    a.qp_num = e->qp->qp_num;
    a.lid = e->lid;
    return a;
}

/* Moves `e` to ready-to-send, connected to the end at `peer` (in this process or another). */
static inline bool rdma_end_connect_to(rdma_end *e, const rdma_end_addr *peer) {
    struct ibv_qp_attr a = {
        .qp_state = IBV_QPS_RTR,
        .path_mtu = IBV_MTU_1024,
        .dest_qp_num = peer->qp_num,
        .rq_psn = 0,
        .max_dest_rd_atomic = 1,
        .min_rnr_timer = 12,
        .ah_attr = {
            .is_global = 1,
            .grh = { .dgid = peer->gid, .sgid_index = (uint8_t)rdma_gid_index(), .hop_limit = 1 },
            .dlid = peer->lid,
            .port_num = 1,
        },
    };
    if (ibv_modify_qp(e->qp, &a,
                      IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                          IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER) != 0) {
        perror("ibv_modify_qp(RTR)");
        return false;
    }
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTS;
    a.timeout = 14;
    a.retry_cnt = 7;
    a.rnr_retry = 7;
    a.sq_psn = 0;
    a.max_rd_atomic = 1;
    if (ibv_modify_qp(e->qp, &a,
                      IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                          IBV_QP_MAX_QP_RD_ATOMIC) != 0) {
        perror("ibv_modify_qp(RTS)");
        return false;
    }
    return true;
}

/* Moves `e` to ready-to-send, connected to `peer`. */
static inline bool rdma_end_connect(rdma_end *e, const rdma_end *peer) {
    rdma_end_addr a = rdma_end_address(peer);
    return rdma_end_connect_to(e, &a);
}

static inline void rdma_end_destroy(rdma_end *e) {
    if (e->qp != NULL) ibv_destroy_qp(e->qp);
    if (e->cq != NULL) ibv_destroy_cq(e->cq);
    memset(e, 0, sizeof *e);
}

static inline double rdma_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Posts one RDMA READ (remote -> local) or WRITE (local -> remote) on `e` from descriptors only
 * and waits (at most 30 s) for its completion; answers whether one came, its status in `*status`. */
static inline bool rdma_post_and_wait(rdma_end *e, enum ibv_wr_opcode op, const zc_rdma_desc *local,
                                      const zc_rdma_desc *remote, enum ibv_wc_status *status) {
    struct ibv_sge sge = { .addr = local->addr, .length = (uint32_t)local->length, .lkey = local->lkey };
    struct ibv_send_wr wr = {
        .wr_id = 42,
        .sg_list = &sge,
        .num_sge = 1,
        .opcode = op,
        .send_flags = IBV_SEND_SIGNALED,
        .wr.rdma = { .remote_addr = remote->addr, .rkey = remote->rkey },
    };
    struct ibv_send_wr *bad = NULL;
    if (ibv_post_send(e->qp, &wr, &bad) != 0) {
        perror("ibv_post_send");
        return false;
    }
    double deadline = rdma_now_s() + 30.0;
    struct ibv_wc wc;
    for (;;) {
        int n = ibv_poll_cq(e->cq, 1, &wc);
        if (n < 0) {
            fprintf(stderr, "ibv_poll_cq failed\n");
            return false;
        }
        if (n == 1) break;
        if (rdma_now_s() > deadline) {
            fprintf(stderr, "no completion within 30 s\n");
            return false;
        }
    }
    if (wc.wr_id != 42) {
        fprintf(stderr, "work completion of another request (wr_id %llu)\n", (unsigned long long)wc.wr_id);
        return false;
    }
    *status = wc.status;
    return true;
}

/* rdma_post_and_wait, answering whether the transfer succeeded. */
static inline bool rdma_transfer(rdma_end *e, enum ibv_wr_opcode op, const zc_rdma_desc *local,
                                 const zc_rdma_desc *remote) {
    enum ibv_wc_status status;
    if (!rdma_post_and_wait(e, op, local, remote, &status)) return false;
    if (status != IBV_WC_SUCCESS) {
        fprintf(stderr, "work completion: %s\n", ibv_wc_status_str(status));
        return false;
    }
    return true;
}

#endif
