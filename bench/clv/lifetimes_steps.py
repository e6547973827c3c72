"""The CLV benchmark's reference side: the same steps as `kith-clv-bench run`, with lifetimes 0.11.3.

    python lifetimes_steps.py FILE CALIBRATION_END [REPEAT] [--skip MODEL,...]

FILE is `customer_id,date,amount` CSV or CDNOW's whitespace-separated master log. Each step is
timed as a user would run it (median of REPEAT runs): summary_data_from_transaction_data (days
collapsed, time in weeks), each fitter's fit (default options), and scoring everyone (expected
purchases over 39 weeks, P(alive), 12-month CLV). Prints one JSON document.
"""
import json
import statistics
import sys
import time

import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter, ModifiedBetaGeoFitter, ParetoNBDFitter
from lifetimes.utils import summary_data_from_transaction_data


def timed(repeat, f):
    times, result = [], None
    for _ in range(max(1, repeat)):
        # The previous result is freed before the clock starts (the Rust side does the same).
        result = None
        start = time.perf_counter()
        result = f()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def read(path):
    with open(path) as f:
        first = f.readline()
    if "," in first:
        df = pd.read_csv(path, dtype={"customer_id": str})
        df["date"] = pd.to_datetime(df["date"], format="%Y-%m-%d")
    else:
        header = None if first.split()[0].isdigit() else 0
        df = pd.read_csv(path, sep=r"\s+", header=header, names=["customer_id", "date", "quantity", "amount"],
                         dtype={"customer_id": str, "date": str})
        df["date"] = pd.to_datetime(df["date"], format="%Y%m%d")
    return df


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--skip")]
    skip = set()
    for a in sys.argv[1:]:
        if a.startswith("--skip="):
            skip = set(a.split("=", 1)[1].split(","))
    path, end = args[0], args[1]
    repeat = int(args[2]) if len(args) > 2 else 3
    read_s, df = timed(1, lambda: read(path))
    summary_s, s = timed(repeat, lambda: summary_data_from_transaction_data(
        df, "customer_id", "date", monetary_value_col="amount",
        observation_period_end=end, freq="D", freq_multiplier=7))
    f, r, T, m = s["frequency"], s["recency"], s["T"], s["monetary_value"]
    seconds = {"read": read_s, "summary": summary_s}
    params = {}

    def fit(name, make):
        def once():
            fitter = make()
            fitter.fit(f, r, T)
            return fitter
        seconds[name], fitter = timed(repeat, once)
        params[name] = {k: float(v) for k, v in fitter.params_.items()}
        return fitter

    bgf = fit("bg_nbd", BetaGeoFitter)
    if "pareto_nbd" not in skip:
        fit("pareto_nbd", ParetoNBDFitter)
    if "mbg_nbd" not in skip:
        fit("mbg_nbd", ModifiedBetaGeoFitter)
    repeaters = s[(f > 0) & (m > 0)]

    def gg_once():
        ggf = GammaGammaFitter()
        ggf.fit(repeaters["frequency"], repeaters["monetary_value"])
        return ggf
    seconds["gamma_gamma"], ggf = timed(repeat, gg_once)
    params["gamma_gamma"] = {{"p": "p", "q": "q", "v": "gamma"}[k]: float(v) for k, v in ggf.params_.items()}

    def score():
        purchases = bgf.conditional_expected_number_of_purchases_up_to_time(39, f, r, T)
        alive = bgf.conditional_probability_alive(f, r, T)
        clv = ggf.customer_lifetime_value(bgf, f, r, T, m, time=12, discount_rate=0.01, freq="W")
        return float(purchases.sum()), float(alive.sum()), float(clv.sum())
    seconds["score"], totals = timed(repeat, score)
    print(json.dumps({
        "tool": "lifetimes",
        "customers": len(s),
        "transactions": len(df),
        "repeat_customers": int((f > 0).sum()),
        "seconds": seconds,
        "params": params,
        "totals": {"expected_purchases_39w": totals[0], "p_alive": totals[1], "clv_12m": totals[2]},
    }))


if __name__ == "__main__":
    main()
