;; Guests that push on every limit. Each task reads nothing; sizes are fixed
;; so tests can set limits on either side of them.
(module
  (import "wasq" "output" (func $output (param i32 i32)))
  (import "wasq" "log" (func $log (param i32 i32 i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (table 1 funcref)
  (data (i32.const 0) "\"ok\"")

  ;; ~10 million instructions of counting, then "ok".
  (func (export "task.count")
    (local $i i32)
    (loop $l
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1000000))))
    (call $output (i32.const 0) (i32.const 4)))

  (func (export "task.spin") (loop $l (br $l)))

  ;; Grow memory by 16 pages (1 MiB): total 18 pages = 1179648 bytes.
  (func (export "task.grow_1mib")
    (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable))
    (call $output (i32.const 0) (i32.const 4)))

  ;; Grow memory until it fails; a limit must stop it before the pool does.
  (func (export "task.grow_forever")
    (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))))

  ;; Grow the table by 100000 elements.
  (func (export "task.grow_table")
    (drop (table.grow (ref.null func) (i32.const 100000)))
    (call $output (i32.const 0) (i32.const 4)))

  ;; Output 65536 bytes of the (zeroed) memory: not JSON, but sized.
  (func (export "task.output_64k") (call $output (i32.const 0) (i32.const 65536)))

  ;; Write 1024 bytes to stdout N times; N = 64 -> 64 KiB.
  (func $write_stdout (param $fd i32) (param $times i32)
    (i32.store (i32.const 100) (i32.const 1024))  ;; iovec.buf
    (i32.store (i32.const 104) (i32.const 1024))  ;; iovec.len
    (loop $l
      (drop (call $fd_write (local.get $fd) (i32.const 100) (i32.const 1) (i32.const 108)))
      (local.set $times (i32.sub (local.get $times) (i32.const 1)))
      (br_if $l (i32.gt_s (local.get $times) (i32.const 0)))))
  (func (export "task.stdout_8k") (call $write_stdout (i32.const 1) (i32.const 8))
    (call $output (i32.const 0) (i32.const 4)))
  (func (export "task.stdout_flood") (call $write_stdout (i32.const 1) (i32.const 100000)))
  (func (export "task.stderr_flood") (call $write_stdout (i32.const 2) (i32.const 100000)))

  ;; 100 log lines of 100 bytes (≈ 11.6 KiB with overhead), or a flood.
  (func $logs (param $times i32)
    (loop $l
      (call $log (i32.const 2) (i32.const 0) (i32.const 100))
      (local.set $times (i32.sub (local.get $times) (i32.const 1)))
      (br_if $l (i32.gt_s (local.get $times) (i32.const 0)))))
  (func (export "task.log_100") (call $logs (i32.const 100)) (call $output (i32.const 0) (i32.const 4)))
  (func (export "task.log_flood") (call $logs (i32.const 10000000)))

  ;; Deep recursion.
  (func $down (param i32) (result i32)
    (i32.add (call $down (i32.add (local.get 0) (i32.const 1))) (i32.const 1)))
  (func (export "task.recurse") (drop (call $down (i32.const 0))))

  ;; Sleep through WASI poll_oneoff on a relative clock for $ns nanoseconds.
  (func $sleep (param $ns i64)
    (i64.store (i32.const 2048) (i64.const 7))        ;; userdata
    (i32.store8 (i32.const 2056) (i32.const 0))       ;; tag = clock
    (i32.store (i32.const 2064) (i32.const 1))        ;; clock id = monotonic
    (i64.store (i32.const 2072) (local.get $ns))      ;; timeout
    (i64.store (i32.const 2080) (i64.const 0))        ;; precision
    (i32.store16 (i32.const 2088) (i32.const 0))      ;; flags: relative
    (drop (call $poll_oneoff (i32.const 2048) (i32.const 3072) (i32.const 1) (i32.const 4000))))
  (func (export "task.sleep_50ms") (call $sleep (i64.const 50000000)) (call $output (i32.const 0) (i32.const 4)))
  (func (export "task.sleep_forever") (call $sleep (i64.const 3600000000000)))
)
