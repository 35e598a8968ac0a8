"""Tiny mpi4py check: every rank prints rank/size/host, rank 0 prints the allreduce sum.

Run with ``mpirun ... python examples/mpi_hello.py`` (or ``srun --mpi=pmix``). Each rank
contributes rank+1, so the sum is size*(size+1)/2; exit code 1 if it is wrong.
"""

from __future__ import annotations

import socket
import sys

from mpi4py import MPI


def main() -> int:
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    total = comm.allreduce(rank + 1, op=MPI.SUM)
    print(f"rank={rank} size={size} host={socket.gethostname()} sum={total}", flush=True)
    expected = size * (size + 1) // 2
    if rank == 0:
        print(f"allreduce sum={total} expected={expected} {'OK' if total == expected else 'WRONG'}",
              flush=True)
    return 0 if total == expected else 1


if __name__ == "__main__":
    sys.exit(main())
