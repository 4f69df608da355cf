#define _GNU_SOURCE
/* The floor of a probe: the least a client can spend on the exchange sidewatch makes, at the rate
 * sidewatch makes it. Each check opens a fresh connection, sends the bytes sidewatch sends, reads
 * the whole answer and closes, then sleeps to the next tick of a fixed grid, as sidewatch's
 * interval does. Blocking system calls only: no event loop, no allocation, no parsing beyond
 * finding the answer's end.
 *
 *   floor http PORT PATH INTERVAL_US SECONDS   GET PATH, Host/User-Agent/Accept as sidewatch's
 *   floor grpc PORT INTERVAL_US SECONDS        grpc.health.v1.Health/Check, as sidewatch's
 *
 * Prints "checks N failed F user_us U sys_us S ran_us R": its own CPU over the checks after a
 * warm-up of 50, split as getrusage samples it, and in all as the scheduler counts it. Built by bench/run-all (cc -O2); used by bench/cpu_probe.py and bench/grpc_cpu.py.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in addr;
static char request[512];
static size_t request_len;
static char ack[9] = {0, 0, 0, 4, 1, 0, 0, 0, 0}; /* SETTINGS with ACK */

static int dial(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* HTTP/1.1: the answer ends after its headers and Content-Length bytes of body. */
static int http_check(void) {
  char buf[4096];
  size_t have = 0;
  int fd = dial(), ok = 0;
  if (fd < 0) return 0;
  if (write(fd, request, request_len) != (ssize_t)request_len) goto out;
  for (;;) {
    ssize_t n = read(fd, buf + have, sizeof buf - 1 - have);
    if (n <= 0) break;
    have += (size_t)n;
    buf[have] = 0;
    char *end = strstr(buf, "\r\n\r\n");
    if (!end) continue;
    char *cl = strcasestr(buf, "\r\ncontent-length:");
    size_t body = cl && cl < end ? strtoul(cl + 17, NULL, 10) : 0;
    if (have >= (size_t)(end + 4 - buf) + body) {
      ok = strncmp(buf, "HTTP/1.1 200", 12) == 0;
      break;
    }
  }
out:
  close(fd);
  return ok;
}

/* gRPC: the preface, SETTINGS, HEADERS and DATA in one write; the SETTINGS acknowledgement HTTP/2
 * requires; frames read until the trailers (HEADERS with END_STREAM). */
static int grpc_check(void) {
  unsigned char buf[16384];
  size_t have = 0;
  int fd = dial(), ok = 0, acked = 0;
  if (fd < 0) return 0;
  if (write(fd, request, request_len) != (ssize_t)request_len) goto out;
  for (;;) {
    ssize_t n = read(fd, buf + have, sizeof buf - have);
    if (n <= 0) break;
    have += (size_t)n;
    size_t at = 0;
    while (have - at >= 9) {
      size_t size = (size_t)buf[at] << 16 | (size_t)buf[at + 1] << 8 | buf[at + 2];
      if (have - at < 9 + size) break;
      int kind = buf[at + 3], flags = buf[at + 4];
      if (kind == 4 && !(flags & 1) && !acked) {
        if (write(fd, ack, sizeof ack) != sizeof ack) goto out;
        acked = 1;
      }
      if (kind == 1 && (flags & 1)) {
        ok = 1;
        goto out;
      }
      at += 9 + size;
    }
    memmove(buf, buf + at, have - at);
    have -= at;
    if (have == sizeof buf) break;
  }
out:
  close(fd);
  return ok;
}

static size_t frame(char *p, int kind, int flags, int stream, const char *payload, size_t len) {
  p[0] = (char)(len >> 16), p[1] = (char)(len >> 8), p[2] = (char)len;
  p[3] = (char)kind, p[4] = (char)flags;
  p[5] = (char)(stream >> 24), p[6] = (char)(stream >> 16), p[7] = (char)(stream >> 8), p[8] = (char)stream;
  memcpy(p + 9, payload, len);
  return 9 + len;
}

/* An HPACK literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2). */
static size_t literal(char *p, const char *name, const char *value) {
  size_t n = strlen(name), v = strlen(value);
  p[0] = 0, p[1] = (char)n;
  memcpy(p + 2, name, n);
  p[2 + n] = (char)v;
  memcpy(p + 3 + n, value, v);
  return 3 + n + v;
}

static double us(struct timeval t) { return t.tv_sec * 1e6 + t.tv_usec; }

/* The CPU this process ran, in nanoseconds, from the scheduler (its first field of schedstat):
 * getrusage's user/system split is sampled at clock ticks, this total is exact. */
static double ran_ns(void) {
  double ns = 0;
  FILE *f = fopen("/proc/self/schedstat", "r");
  if (f) {
    if (fscanf(f, "%lf", &ns) != 1) ns = 0;
    fclose(f);
  }
  return ns;
}

int main(int argc, char **argv) {
  int grpc = argc == 5 && strcmp(argv[1], "grpc") == 0;
  if (!grpc && !(argc == 6 && strcmp(argv[1], "http") == 0)) {
    fprintf(stderr, "usage: floor http PORT PATH INTERVAL_US SECONDS | floor grpc PORT INTERVAL_US SECONDS\n");
    return 2;
  }
  int port = atoi(argv[2]);
  long interval = atol(argv[grpc ? 3 : 4]);
  double seconds = atof(argv[grpc ? 4 : 5]);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (grpc) {
    char headers[256], authority[32];
    size_t h = 0;
    snprintf(authority, sizeof authority, "127.0.0.1:%d", port);
    h += literal(headers + h, ":method", "POST");
    h += literal(headers + h, ":scheme", "http");
    h += literal(headers + h, ":path", "/grpc.health.v1.Health/Check");
    h += literal(headers + h, ":authority", authority);
    h += literal(headers + h, "content-type", "application/grpc");
    h += literal(headers + h, "te", "trailers");
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    memcpy(request, preface, sizeof preface - 1);
    request_len = sizeof preface - 1;
    request_len += frame(request + request_len, 4, 0, 0, "", 0);
    request_len += frame(request + request_len, 1, 4, 1, headers, h);         /* END_HEADERS */
    request_len += frame(request + request_len, 0, 1, 1, "\0\0\0\0\0", 5);    /* END_STREAM */
  } else {
    request_len = (size_t)snprintf(request, sizeof request,
                                   "GET %s HTTP/1.1\r\nhost: 127.0.0.1:%d\r\nuser-agent: sidewatch/0\r\n"
                                   "accept: */*\r\n\r\n",
                                   argv[3], port);
  }
  int (*check)(void) = grpc ? grpc_check : http_check;
  for (int i = 0; i < 50; i++) check();

  struct rusage r0, r1;
  struct timespec next, now;
  long checks = 0, failed = 0;
  getrusage(RUSAGE_SELF, &r0);
  double ran0 = ran_ns();
  clock_gettime(CLOCK_MONOTONIC, &next);
  double end = next.tv_sec + next.tv_nsec / 1e9 + seconds;
  do {
    failed += !check();
    checks++;
    next.tv_nsec += interval * 1000;
    while (next.tv_nsec >= 1000000000) next.tv_nsec -= 1000000000, next.tv_sec++;
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    clock_gettime(CLOCK_MONOTONIC, &now);
  } while (now.tv_sec + now.tv_nsec / 1e9 < end);
  double ran1 = ran_ns();
  getrusage(RUSAGE_SELF, &r1);
  printf("checks %ld failed %ld user_us %.0f sys_us %.0f ran_us %.0f\n", checks, failed,
         us(r1.ru_utime) - us(r0.ru_utime), us(r1.ru_stime) - us(r0.ru_stime), (ran1 - ran0) / 1e3);
  return 0;
}
