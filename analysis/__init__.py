"""Analysis of `saegap run` result files.

    from analysis.reader import Result
    r = Result("out.h5")
    r.kl("blocks.6.hook_resid_pre", "sae")      # float64 [n, T], NaN where not measured

`analysis.report` turns a result file into report.md / report.html and one PNG per figure:

    /usr/bin/python3 -m analysis.report RESULT.h5 -o DIR

Debian's /usr/bin/python3 with NumPy, h5py and matplotlib only.
"""
