/* Prints the sizes and offsets, in the system's <infiniband/verbs.h>, of every struct field that
 * zcopy declares for itself (src/rdma/verbs.rs). tests/c_api.rs compares them with the Rust side. */

#include <infiniband/verbs.h>
#include <stddef.h>
#include <stdio.h>

#define SHOW_OFFSET(type, field) printf("offset %s.%s %zu\n", #type, #field, offsetof(struct type, field))
#define SHOW_SIZE(type) printf("size %s %zu\n", #type, sizeof(struct type))

int main(void) {
    SHOW_OFFSET(ibv_pd, context);
    SHOW_OFFSET(ibv_pd, handle);

    SHOW_SIZE(ibv_mr);
    SHOW_OFFSET(ibv_mr, context);
    SHOW_OFFSET(ibv_mr, pd);
    SHOW_OFFSET(ibv_mr, addr);
    SHOW_OFFSET(ibv_mr, length);
    SHOW_OFFSET(ibv_mr, handle);
    SHOW_OFFSET(ibv_mr, lkey);
    SHOW_OFFSET(ibv_mr, rkey);

    SHOW_SIZE(ibv_device_attr);
    SHOW_OFFSET(ibv_device_attr, fw_ver);
    SHOW_OFFSET(ibv_device_attr, node_guid);
    SHOW_OFFSET(ibv_device_attr, sys_image_guid);
    SHOW_OFFSET(ibv_device_attr, max_mr_size);

    printf("const IBV_ACCESS_LOCAL_WRITE %d\n", (int)IBV_ACCESS_LOCAL_WRITE);
    printf("const IBV_ACCESS_REMOTE_WRITE %d\n", (int)IBV_ACCESS_REMOTE_WRITE);
    printf("const IBV_ACCESS_REMOTE_READ %d\n", (int)IBV_ACCESS_REMOTE_READ);
    return 0;
}
