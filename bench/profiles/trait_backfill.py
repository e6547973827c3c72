"""What declaring computed traits through the API costs a server holding the demo world.

    python3 bench/profiles/trait_backfill.py BINARY [DECLARATIONS] [DEMO_DATA_DIR]

Loads the demo world (5,000 customers, about 345,000 events) with `BINARY demo generate --into`
unless DEMO_DATA_DIR names one already loaded, copies it, starts `BINARY serve` on the copy,
declares DECLARATIONS computed traits at once (default 5) and waits until every one is `ready`,
sampling the server's resident memory every 20 ms. Prints the memory before, the most seen while
the traits' pasts were computed, how long they took, and the memory 5 s later. Each trait's past
is read from every stored event, so this is where a server's memory grows with the data it
holds.
"""
import sys
import threading
import time

from server_memory import DemoServer, PeakSampler


def main():
    binary = sys.argv[1]
    declarations = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    server = DemoServer(binary, sys.argv[3] if len(sys.argv) > 3 else None)
    try:
        before = server.rss_mb()
        answers = []

        def declare(n):
            status, _ = server.call(
                "POST", "/v1/computed-traits", server.admin_key,
                {"name": f"revenue_{n}", "kind": "sum", "event": "Order Completed",
                 "property": "revenue"})
            answers.append(status)

        with PeakSampler(server) as peak:
            started = time.time()
            declaring = [threading.Thread(target=declare, args=(n,)) for n in range(declarations)]
            for thread in declaring:
                thread.start()
            for thread in declaring:
                thread.join()
            while True:
                _, listed = server.call("GET", "/v1/computed-traits", server.admin_key)
                if all(t["status"] == "ready" for t in listed["computed_traits"]):
                    break
                time.sleep(0.05)
            took = time.time() - started
        time.sleep(5)
        print(f"{declarations} traits declared (answers {sorted(answers)}): ready in {took:.1f} s; "
              f"server RSS {before:.0f} MB before, at most {peak.most:.0f} MB while computing, "
              f"{server.rss_mb():.0f} MB 5 s after")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
