"""Limits that bound what is read and what is accepted, each with its source.

Most are QEMU's own (``block/qcow2.h``, ``block/qcow2.c``): an image beyond them does
not open in QEMU, so the import service cannot read it either.
"""

MIN_CLUSTER_BITS = 9  # qcow2.rst: cluster_bits must be at least 9 (512 bytes)
MAX_CLUSTER_BITS = 21  # block/qcow2.h MAX_CLUSTER_BITS: 2 MiB clusters at most
MIN_SUBCLUSTER_SIZE = 512  # qcow2.c: extended L2 needs cluster_size / 32 >= 512
MAX_REFCOUNT_ORDER = 6  # qcow2.c: refcount entries are at most 64 bits wide
MAX_BACKING_FILE_NAME = 1023  # qcow2.rst and qcow2.c: "Backing file name too long"
MAX_BACKING_FORMAT_NAME = 15  # qcow2.c: ext_backing_format len must be < 16
QCOW_MAX_L1_SIZE = 32 << 20  # block/qcow2.h: active L1 table at most 32 MiB
QCOW_MAX_REFTABLE_SIZE = 8 << 20  # block/qcow2.h: refcount table at most 8 MiB
QCOW_MAX_SNAPSHOTS = 65536  # block/qcow2.h
QCOW_MAX_SNAPSHOTS_SIZE = 64 << 20  # block/qcow2.h: whole snapshot table, 64 MiB
QCOW_MAX_SNAPSHOT_EXTRA_DATA = 1024  # qcow2-snapshot.c: extra data per entry
QCOW2_MAX_BITMAPS = 65535  # block/qcow2.h
QCOW2_MAX_BITMAP_DIRECTORY_SIZE = 1024 * QCOW2_MAX_BITMAPS  # block/qcow2.h
BME_MAX_TABLE_SIZE = 0x8000000  # block/qcow2-bitmap.c: entries in one bitmap table
BME_MAX_PHYS_SIZE = 0x20000000  # block/qcow2-bitmap.c: 512 MiB of bitmap data
BME_MIN_GRANULARITY_BITS = 9  # block/qcow2-bitmap.c
BME_MAX_GRANULARITY_BITS = 31  # block/qcow2-bitmap.c
BME_MAX_NAME_SIZE = 1023  # block/qcow2-bitmap.c
# qcow2-refcount.c qcow2_check_refcounts: a file of more clusters fails with EFBIG.
QCOW2_CHECK_MAX_CLUSTERS = (1 << 31) - 1
