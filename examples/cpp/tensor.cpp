// An engine writing a tensor in place in zcopy memory and reading it back without a copy.
//
//   g++ -std=c++17 -Wall -Wextra -Werror -Iinclude examples/cpp/tensor.cpp -Ltarget/release -lzcopy

#include <cstdio>
#include <numeric>

#include "zcopy.hpp"

int main() {
    try {
        zc::Pool pool(zc::Options().with_size(64 << 20));

        // A 256 x 256 float tensor, written by the "engine" straight into the pool.
        const size_t rows = 256, cols = 256, bytes = rows * cols * sizeof(float);
        zc::Buffer out = pool.create("layer0/activations", bytes);
        float *w = out.as<float>();
        for (size_t i = 0; i < rows * cols; i++) {
            w[i] = static_cast<float>(i % 1000) * 0.5f;
        }
        out.seal();

        // Another component reads it: same bytes, no copy.
        zc::Buffer in = pool.get("layer0/activations");
        const float *r = in.as_const<float>();
        double sum = std::accumulate(r, r + rows * cols, 0.0);
        std::printf("read %zu bytes, sum %.1f\n", in.size(), sum);
        if (static_cast<const void *>(r) != static_cast<const void *>(w)) {
            std::printf("copy detected\n");
            return 1;
        }
        std::printf("zero-copy: reader pointer == writer pointer (%p)\n", static_cast<const void *>(r));

        // Errors are exceptions with the status and the library's message.
        try {
            pool.create("layer0/activations", 16);
        } catch (const zc::Error &e) {
            std::printf("expected error: %s (status %u)\n", e.what(), e.status());
        }
        pool.erase("layer0/activations");
        std::printf("objects still held after erase: %llu\n", static_cast<unsigned long long>(pool.stats().object_count));
    } catch (const zc::Error &e) {
        std::fprintf(stderr, "zcopy: %s\n", e.what());
        return 1;
    }
    return 0;
}
