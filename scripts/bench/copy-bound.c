// The floor under a mirror's 1 MiB writes on this machine, with no NBD server at all: a sender thread
// pushes 1 MiB messages through a unix socket pair (the client's copy), the receiver takes each and
// writes it to one or two files in DIR (a server's receive copy, then one page-cache copy per leg).
// One leg is what `nbdkit file` does per write; two legs what a 2-leg mirror must do. Modes:
//   copy   recv(2) into a buffer, then pwrite(2) to each leg
//   splice splice(2) socket -> pipe, tee(2) to a second pipe, splice(2) each pipe -> its leg
//          (no receive copy in user space; the page-cache copies remain)
//   map    recv(2) into a buffer, then memcpy into a MAP_SHARED mapping of each leg (what nbd-mirror's file
//          legs do on tmpfs/ramfs: the same page-cache pages, without pwrite's per-4-KiB-page work)
// Prints MB/s and the process's CPU time (both threads) per MiB, alternating modes over ROUNDS rounds.
//
//   gcc -O2 -pthread -o /tmp/copy-bound scripts/bench/copy-bound.c && /tmp/copy-bound [DIR] [MiB] [ROUNDS]
//
// Measured 2026-11-26 on the 2-vCPU AMD EPYC VM, DIR=/dev/shm, 3000 MiB, 2 rounds each, three runs: copy 1 leg
// 1601-1941 MB/s at 688-831 us/MiB; copy 2 legs 1125-1319 MB/s at 945-1108 us/MiB (0.67-0.76x the throughput
// of 1 leg in the same round); splice 2 legs 1043-1277 MB/s at 947-1151 us/MiB (no better than copy); map 2
// legs 1368-1434 MB/s at 885-930 us/MiB (first-touch faults included). One receiver thread here; the server
// writes from several pool threads at once, where the saving measured larger (cpu.js: 0.74x CPU per 1 MiB
// mirrored write, see src/mirror/legs/file.ts).
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MIB (1 << 20)
#define FILE_BYTES (256L * MIB)

static int sv[2];
static long iterations;

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void *sender(void *arg) {
  (void)arg;
  char *b;
  if (posix_memalign((void **)&b, 4096, MIB)) die("posix_memalign");
  memset(b, 7, MIB);
  for (long i = 0; i < iterations; i++)
    for (size_t o = 0; o < MIB;) {
      ssize_t n = send(sv[0], b + o, MIB - o, 0);
      if (n <= 0) die("send");
      o += (size_t)n;
    }
  free(b);
  return NULL;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
  struct rusage r;
  getrusage(RUSAGE_SELF, &r);
  return (double)(r.ru_utime.tv_sec + r.ru_stime.tv_sec) + (double)(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

enum { COPY, SPLICE, MAP };
static const char *const MODE_NAMES[] = {"copy", "splice", "map"};

static void run(const char *dir, int mode, int legs) {
  char pa[4096], pb[4096];
  snprintf(pa, sizeof pa, "%s/copy-bound-a.%d", dir, getpid());
  snprintf(pb, sizeof pb, "%s/copy-bound-b.%d", dir, getpid());
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) die("socketpair");
  int fd[2] = {open(pa, O_RDWR | O_CREAT | O_TRUNC, 0600), open(pb, O_RDWR | O_CREAT | O_TRUNC, 0600)};
  if (fd[0] < 0 || fd[1] < 0 || ftruncate(fd[0], FILE_BYTES) || ftruncate(fd[1], FILE_BYTES)) die(dir);
  char *buf;
  if (posix_memalign((void **)&buf, 4096, MIB)) die("posix_memalign");
  int p[2][2];
  if (pipe(p[0]) || pipe(p[1])) die("pipe");
  if (mode == SPLICE && (fcntl(p[0][0], F_SETPIPE_SZ, MIB) < 0 || fcntl(p[1][0], F_SETPIPE_SZ, MIB) < 0)) die("F_SETPIPE_SZ");
  uint8_t *map[2] = {NULL, NULL};
  if (mode == MAP)
    for (int l = 0; l < 2; l++)
      if ((map[l] = mmap(NULL, FILE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd[l], 0)) == MAP_FAILED) die("mmap");
  double c0 = cpu_seconds(), t0 = now();
  pthread_t th;
  if (pthread_create(&th, NULL, sender, NULL)) die("pthread_create");
  for (long i = 0; i < iterations; i++) {
    off_t off = (off_t)((i * MIB) % FILE_BYTES);
    if (mode != SPLICE) {
      for (size_t o = 0; o < MIB;) {
        ssize_t n = recv(sv[1], buf + o, MIB - o, 0);
        if (n <= 0) die("recv");
        o += (size_t)n;
      }
      for (int l = 0; l < legs; l++)
        if (mode == MAP) memcpy(map[l] + off, buf, MIB);
        else if (pwrite(fd[l], buf, MIB, off) != MIB) die("pwrite");
    } else {
      for (size_t o = 0; o < MIB;) {
        ssize_t n = splice(sv[1], NULL, p[0][1], NULL, MIB - o, SPLICE_F_MOVE);
        if (n <= 0) die("splice from socket");
        o += (size_t)n;
      }
      if (legs > 1)
        for (size_t o = 0; o < MIB;) {
          ssize_t n = tee(p[0][0], p[1][1], MIB - o, 0);
          if (n <= 0) die("tee");
          o += (size_t)n;
        }
      for (int l = 0; l < legs; l++) {
        loff_t at = off;
        for (size_t o = 0; o < MIB;) {
          ssize_t n = splice(p[l][0], NULL, fd[l], &at, MIB - o, SPLICE_F_MOVE);
          if (n <= 0) die("splice to leg");
          o += (size_t)n;
        }
      }
    }
  }
  pthread_join(th, NULL);
  double t1 = now(), c1 = cpu_seconds();
  printf("%-6s %d leg%s: %5.0f MB/s, %4.0f us CPU per MiB\n", MODE_NAMES[mode], legs, legs > 1 ? "s" : " ",
         (double)iterations * MIB / (t1 - t0) / 1e6, (c1 - c0) / (double)iterations * 1e6);
  for (int l = 0; l < 2; l++)
    if (map[l] != NULL) munmap(map[l], FILE_BYTES);
  unlink(pa);
  unlink(pb);
  close(fd[0]);
  close(fd[1]);
  close(sv[0]);
  close(sv[1]);
  for (int k = 0; k < 2; k++) close(p[k][0]), close(p[k][1]);
  free(buf);
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "/dev/shm";
  iterations = argc > 2 ? atol(argv[2]) : 3000;
  int rounds = argc > 3 ? atoi(argv[3]) : 2;
  for (int r = 0; r < rounds; r++) {
    run(dir, COPY, 1);
    run(dir, COPY, 2);
    run(dir, SPLICE, 2);
    run(dir, MAP, 2);
  }
  return 0;
}
