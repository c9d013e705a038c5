"""Writes tests/corpus/*.ipynb (`python3 tests/corpus/make_corpus.py`): small notebooks written for
kfmagic's tests, each reproducing a pattern found in public notebooks (Kubeflow Kale's examples,
ordinary data-science notebooks). Cell ids are stable, so regenerating changes nothing."""
import os
import sys

import nbformat

OUT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(OUT))
from conftest import tagged_notebook  # noqa: E402  (tests/ is not a package)
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}


def write(name, cells, kale=None, minor=5):
    metadata = {"kernelspec": KERNEL}
    if kale is not None:
        metadata["kubeflow_notebook"] = kale
    nb = tagged_notebook(*cells, metadata=metadata)
    nb.nbformat_minor = minor
    for number, cell in enumerate(nb.cells, 1):  # stable ids: regenerating changes nothing
        if minor < 5:
            cell.pop("id", None)
        else:
            cell["id"] = f"cell-{number}"
    nbformat.write(nb, f"{OUT}/{name}.ipynb")


# A feature loop over [train, test] changes both frames in place (Kale's titanic example), and a
# helper that changes its argument is called on each.
write("kale_loop_changes_frames", [
    "# Iris, Kale-tagged\nThe preprocessing steps change the frames in place, through a loop and a helper.",
    ("!pip install -r requirements.txt", "skip"),
    ("import pandas as pd\nfrom sklearn.datasets import load_iris\nfrom sklearn.linear_model import LogisticRegression", "imports"),
    ("TEST_FRACTION = 0.25\nMAX_ITER = 300", "pipeline-parameters"),
    ("frame = load_iris(as_frame=True).frame\ntest_df = frame.sample(frac=TEST_FRACTION, random_state=0)\ntrain_df = frame.drop(test_df.index)", "block:loaddata"),
    ("train_df.describe()", "skip"),
    ("data = [train_df, test_df]\nfor dataset in data:\n    dataset['ratio'] = dataset['sepal length (cm)'] / dataset['sepal width (cm)']", "block:datapreprocessing", "prev:loaddata"),
    ("LABEL = 'target'",),
    ("def add_area(df):\n    df['area'] = df['petal length (cm)'] * df['petal width (cm)']\n\n\nfor df in (train_df, test_df):\n    add_area(df)", "block:featureengineering", "prev:datapreprocessing"),
    ("features = ['ratio', 'area']\nmodel = LogisticRegression(max_iter=MAX_ITER).fit(train_df[features], train_df[LABEL])\naccuracy = model.score(test_df[features], test_df[LABEL])", "block:train", "prev:featureengineering"),
    ("print(accuracy)", "pipeline-metrics"),
], kale={"pipeline_name": "iris-frames", "experiment_name": "corpus", "docker_image": "", "volumes": []})

# `block:imports` is Kale's imports tag, and a step may be continued by untagged cells
# (Kale's own tag-parsing test notebook); nbformat 4.2, no cell ids.
write("kale_block_imports", [
    ("import os\nimport numpy as np\n\npath = '.'", "block:imports"),
    ("values = np.arange(5)\ntotal = int(values.sum())", "block:make"),
    ("print(total)", "block:report", "prev:make"),
    ("print(f'the total from the step before is {total}')",),
    ("import json", "block:imports"),
    ("names = json.dumps(sorted(os.listdir(path)))", "prev:make", "block:listing"),
], minor=2)

# A `functions` cell whose function reads a step's result and a parameter when called; a metrics
# cell with a line Kale cannot read.
write("kale_function_reads_step_data", [
    ("import numpy as np", "imports"),
    ("def scaled():\n    return data * FACTOR", "functions"),
    ("FACTOR = 3", "pipeline-parameters"),
    ("data = np.arange(4)", "step:load"),
    ("total = int(scaled().sum())", "step:use", "prev:load"),
    ("print(total)\nprint(f'total is {total}')", "pipeline-metrics"),
], kale={"pipeline_name": "scaled"})

# The first and the last cell share a step name, around the steps in between (Kale's
# examples/base/Example.ipynb): the notebook's fault, said once, in Kale's words.
write("kale_step_split_around_others", [
    ("rows = [[1, 2], [3, 4], [5, 6]]\nlabels = [0, 1, 1]", "step:evaluation"),
    ("half = len(rows) // 2\ntrain_rows, test_rows = rows[:half], rows[half:]", "step:preprocessing"),
    ("model = {'threshold': sum(sum(r) for r in train_rows) / len(train_rows)}", "step:training"),
    ("predictions = [int(sum(r) > model['threshold']) for r in test_rows]\naccuracy = sum(p == y for p, y in zip(predictions, labels[half:])) / len(predictions)", "step:evaluation"),
])

# Kale's newer settings and tags (examples/serving/sklearn/iris.ipynb): base_image, enable_caching,
# labels in steps_defaults, volumes, report:disabled, cache:enabled, a skipped serving cell.
write("kale_settings_and_tags", [
    ("!pip3 install --user -r requirements.txt", "skip"),
    ("from sklearn import datasets\nfrom sklearn.model_selection import train_test_split\nfrom sklearn.tree import DecisionTreeClassifier", "imports"),
    ("MAX_DEPTH = 2", "pipeline-parameters"),
    ("x, y = datasets.load_iris(return_X_y=True)", "step:load_transform_data", "report:disabled"),
    ("x_trn, x_tst, y_trn, y_tst = train_test_split(x, y, test_size=.2, random_state=0)",),
    ("model = DecisionTreeClassifier(max_depth=int(MAX_DEPTH))", "prev:load_transform_data", "step:train_model", "cache:enabled"),
    ("model.fit(x_trn, y_trn)",),
    ("accuracy = model.score(x_tst, y_tst)", "step:evaluate_model", "prev:train_model"),
    ("from kale.common.serveutils import serve\nkfserver = serve(model)", "skip"),
    ("print(accuracy)", "pipeline-metrics"),
], kale={
    "base_image": "python:3.11", "enable_caching": False, "experiment": {"id": "new", "name": "iris-experiment"},
    "experiment_name": "iris-experiment", "katib_run": False, "pipeline_name": "iris-pipeline",
    "steps_defaults": ["label:access-ml-pipeline:true", "label:access-rok:true"],
    "volumes": [{"mount_point": "/home/jovyan", "name": "workspace", "size": 5, "size_type": "Gi", "type": "clone"}],
}, minor=4)

# A step reads what only a `skip` cell assigns: the notebook's fault, said with its cell and tag.
write("kale_reads_skipped_cell", [
    ("import numpy as np", "imports"),
    ("base = np.arange(3)", "skip"),
    ("doubled = base * 2", "step:double"),
])

# `%matplotlib inline` in the prelude and plt.show() in a step (nearly every plotting notebook).
write("magics_matplotlib_inline", [
    ("%%prelude\n%matplotlib inline\nimport matplotlib.pyplot as plt",),
    ("%%step plot\nfig, ax = plt.subplots()\nax.plot([1, 2, 3])\nplt.show()\npoints = 3",),
    ("%%step report\n%config InlineBackend.figure_format = 'retina'\ndoubled = points * 2",),
])

# A prelude helper that changes its argument in place, called in a step of its own.
write("magics_helper_changes_argument", [
    ("%%prelude\nimport pandas as pd\n\n\ndef add_total(df):\n    df['total'] = df.sum(axis=1)",),
    ("%%step load\nframe = pd.DataFrame({'a': [1, 2], 'b': [3, 4]})",),
    ("%%step enrich\nadd_total(frame)",),
    ("%%step report --metrics grand\ngrand = int(frame['total'].sum())",),
])

# `%%time` on the training cell (common in ordinary notebooks): what its body assigns is the step's.
write("kale_time_magic_cell", [
    ("from sklearn.datasets import load_wine\nfrom sklearn.tree import DecisionTreeClassifier", "imports"),
    ("X, y = load_wine(return_X_y=True)", "step:load"),
    ("%%time\nmodel = DecisionTreeClassifier(max_depth=2, random_state=0).fit(X, y)", "step:train"),
    ("%%capture log\nscore = model.score(X, y)\nprint(score)", "step:evaluate"),
    ("print(score)", "pipeline-metrics"),
], kale={"pipeline_name": "wine-time"})

# A step that fails: its traceback shows the tagged cell's own line numbers.
write("kale_step_raises", [
    ("values = [1, 2]\nratio = values[0] / 0", "step:compute"),
])

# `%run helpers.py` in the prelude defines names kfmagic cannot see: not "no step provides" errors.
write("magics_run_helper_script", [
    ("%%prelude\n%run corpus_helpers.py",),
    ("%%step first\nstart = bump(BASE)",),
    ("%%step second --metrics doubled\ndoubled = start * 2",),
])

# A Kale notebook seeded once in its imports cell, whose steps draw from numpy's global generator
# without saying so (train_test_split and a random forest without random_state; Kale's
# examples/serving/sklearn/iris.ipynb once seeded): a step after another that drew gets other numbers
# than the notebook top to bottom, and the run names it.
write("kale_seeded_implicit_random", [
    "# Iris, seeded once\nThe split and the forest draw from numpy's global generator.",
    ("import numpy as np\nfrom sklearn import datasets\nfrom sklearn.model_selection import train_test_split\n"
     "from sklearn.ensemble import RandomForestClassifier\n\nnp.random.seed(0)", "imports"),
    ("N_ESTIMATORS = 25", "pipeline-parameters"),
    ("x, y = datasets.load_iris(return_X_y=True)", "step:load_transform_data"),
    ("x_trn, x_tst, y_trn, y_tst = train_test_split(x, y, test_size=.3)",),
    ("x_trn[:3]", "skip"),
    ("model = RandomForestClassifier(n_estimators=int(N_ESTIMATORS), max_depth=2)", "prev:load_transform_data", "step:train_model"),
    ("model.fit(x_trn, y_trn)",),
    ("preds = model.predict(x_tst)\naccuracy = float((preds == y_tst).mean())", "prev:train_model", "step:evaluate_model"),
    ("print(accuracy)", "pipeline-metrics"),
], kale={"pipeline_name": "iris-seeded", "experiment_name": "corpus"})

# An ordinary notebook marked as a new user would (handson-ml2's end-to-end chapter): a prelude that
# seeds, sets up plots and a save_fig helper; steps that import numpy again and seed themselves; a
# custom transformer whose methods read module globals that a later cell rebinds; a loop dropping a
# column of two frames in place; a helper from one step called in another; joblib of the pipeline.
write("magics_end_to_end_project", [
    ("%load_ext kfmagic\n%pipeline init diabetes --experiment corpus",),
    ("%%prelude\nimport os\nimport numpy as np\nnp.random.seed(42)\n%matplotlib inline\nimport matplotlib.pyplot as plt\n"
     "IMAGES_PATH = os.path.join('.', 'images', 'end_to_end')\nos.makedirs(IMAGES_PATH, exist_ok=True)\n\n\n"
     "def save_fig(fig_id):\n    plt.tight_layout()\n    plt.savefig(os.path.join(IMAGES_PATH, fig_id + '.png'), dpi=50)",),
    ("%%step load\nimport pandas as pd\nfrom sklearn.datasets import load_diabetes\n\nframe = load_diabetes(as_frame=True).frame\nframe.head()",),
    ("%%step load\nframe.hist(bins=20, figsize=(8, 6))\nsave_fig('histograms')",),
    ("%%step random_split\n# to make this output identical at every run\nnp.random.seed(42)",),
    ("%%step random_split\nimport numpy as np\n\n\ndef split_train_test(data, test_ratio):\n"
     "    shuffled = np.random.permutation(len(data))\n    size = int(len(data) * test_ratio)\n"
     "    return data.iloc[shuffled[size:]], data.iloc[shuffled[:size]]\n\n\n"
     "train_set, test_set = split_train_test(frame, 0.2)\nlen(train_set)",),
    ("%%step stratify\nfrom sklearn.model_selection import StratifiedShuffleSplit\n\n"
     "frame['bmi_cat'] = pd.cut(frame['bmi'], bins=[-1.0, -0.03, 0.0, 0.03, 1.0], labels=[1, 2, 3, 4])\n"
     "split = StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=42)\n"
     "for train_index, test_index in split.split(frame, frame['bmi_cat']):\n"
     "    strat_train_set = frame.loc[train_index]\n    strat_test_set = frame.loc[test_index]",),
    ("%%step stratify\nfor set_ in (strat_train_set, strat_test_set):\n    set_.drop('bmi_cat', axis=1, inplace=True)",),
    ("%%step features\nfrom sklearn.base import BaseEstimator, TransformerMixin\n\nbmi_ix, bp_ix = 0, 1\n\n\n"
     "class CombinedAttributesAdder(BaseEstimator, TransformerMixin):\n"
     "    def __init__(self, add_product=True):\n        self.add_product = add_product\n\n"
     "    def fit(self, X, y=None):\n        return self\n\n"
     "    def transform(self, X):\n        ratio = X[:, bmi_ix] / (np.abs(X[:, bp_ix]) + 1)\n"
     "        if self.add_product:\n            return np.c_[X, ratio, X[:, bmi_ix] * X[:, bp_ix]]\n"
     "        return np.c_[X, ratio]",),
    ("%%step features\nfeatures = strat_train_set.drop('target', axis=1)\nlabels = strat_train_set['target'].copy()\n"
     "col_names = 'bmi', 'bp'\nbmi_ix, bp_ix = [features.columns.get_loc(c) for c in col_names]",),
    ("%%step prepare\nfrom sklearn.pipeline import Pipeline\nfrom sklearn.preprocessing import StandardScaler\n\n"
     "num_pipeline = Pipeline([('attribs_adder', CombinedAttributesAdder()), ('std_scaler', StandardScaler())])\n"
     "prepared = num_pipeline.fit_transform(features.values)\nprepared.shape",),
    ("%%step linear --metrics lin_rmse\nfrom sklearn.linear_model import LinearRegression\n"
     "from sklearn.metrics import mean_squared_error\n\nlin_reg = LinearRegression().fit(prepared, labels)\n"
     "lin_rmse = float(np.sqrt(mean_squared_error(labels, lin_reg.predict(prepared))))\n\n\n"
     "def display_scores(scores):\n    print('Scores:', scores.round(2))\n    print('Mean:', round(scores.mean(), 2))",),
    ("%%step forest\nfrom sklearn.ensemble import RandomForestRegressor\nfrom sklearn.model_selection import cross_val_score\n\n"
     "forest_reg = RandomForestRegressor(n_estimators=20, random_state=42)\n"
     "scores = cross_val_score(forest_reg, prepared, labels, scoring='neg_mean_squared_error', cv=3)\n"
     "forest_rmse_scores = np.sqrt(-scores)\ndisplay_scores(forest_rmse_scores)",),
    ("%%step save\nimport joblib\n\nfull = Pipeline([('preparation', num_pipeline), ('linear', LinearRegression())])\n"
     "full.fit(features.values, labels)\njoblib.dump(full, 'my_model.pkl')\n"
     "my_model_loaded = joblib.load('my_model.pkl')\n"
     "test_predictions = my_model_loaded.predict(strat_test_set.drop('target', axis=1).values).round(6)",),
])

# Kubeflow Kale's examples/serving/xgboost/iris.ipynb (kubeflow-kale/kale at 3e6b711, Apache-2.0),
# its split given a random_state, its `!pip3 install` cell left out: xgboost DMatrix objects (native memory, no pickle support) pass
# from the step that builds them to the steps that train and evaluate, as Kale passes them.
write("kale_xgboost_dmatrix", [
    ("import numpy as np\nimport xgboost as xgb\n\nfrom sklearn import datasets\nfrom sklearn.model_selection import train_test_split\n"
     "from sklearn.metrics import precision_score, recall_score, f1_score, accuracy_score", "imports"),
    ('ETA = .3\nMAX_DEPTH = 3\nOBJECTIVE = "multi:softprob"\nSTEPS = 20', "pipeline-parameters"),
    ("x, y = datasets.load_iris(return_X_y=True)", "step:load_transform_data"),
    ("x_trn, x_tst, y_trn, y_tst = train_test_split(x, y, test_size=.2, random_state=3)",),
    ("D_trn = xgb.DMatrix(x_trn, label=y_trn)\nD_tst = xgb.DMatrix(x_tst, label=y_tst)",),
    ('param = {"eta": float(ETA),\n         "max_depth": int(MAX_DEPTH),\n         "objective": OBJECTIVE,\n         "num_class": 3}\n\n'
     "steps = int(STEPS)", "prev:load_transform_data", "step:train_model"),
    ("model = xgb.train(param, D_trn, steps)",),
    ("preds = model.predict(D_tst)\nmax_preds = np.asarray([np.argmax(line) for line in preds])",
     "prev:load_transform_data", "prev:train_model", "step:evaluate_model"),
    ("precision = precision_score(y_tst, max_preds, average='macro')\nrecall = recall_score(y_tst, max_preds, average='macro')\n"
     "f1 = f1_score(y_tst, max_preds, average='macro')\naccuracy = accuracy_score(y_tst, max_preds)",),
    ("print(precision)\nprint(recall)\nprint(f1)\nprint(accuracy)", "pipeline-metrics"),
], kale={"pipeline_name": "iris-xgboost", "experiment_name": "corpus"})

# PythonDataScienceHandbook's notebooks/03.12-Performance-Eval-and-Query.ipynb (jakevdp at d662314,
# code MIT), shortened, a step per section as a new user marks it: one generator of the notebook's
# own drawn from by section after section, `%timeit` and `pd.eval` reading frames of another step by
# name, `np.allclose(...)` closing sections (numpy imported in the first step), query with @names;
# then a frame saved to a file and read back in another step (handson-ml2's tools_pandas.ipynb).
write("magics_eval_query_sections", [
    ("%load_ext kfmagic\n%pipeline init eval-query --experiment corpus",),
    ("%%step arrays\nimport numpy as np\nrng = np.random.default_rng(42)\nx = rng.random(100000)\ny = rng.random(100000)\n"
     "%timeit -n1 -r1 x + y",),
    ("%%step mask\nmask = (x > 0.5) & (y < 0.5)",),
    ("%%step frames\nimport pandas as pd\nnrows, ncols = 1000, 10\n"
     "df1, df2, df3, df4 = (pd.DataFrame(rng.random((nrows, ncols))) for i in range(4))",),
    ("%%step time_eval\n%timeit -n1 -r1 pd.eval('df1 + df2 + df3 + df4')",),
    ("%%step eval_check\nnp.allclose(df1 + df2 + df3 + df4,\n            pd.eval('df1 + df2 + df3 + df4'))",),
    ("%%step small_frames\ndf1, df2, df3, df4, df5 = (pd.DataFrame(rng.integers(0, 1000, (100, 3)))\n"
     "                           for i in range(5))",),
    ("%%step eval_arith\nresult1 = -df1 * df2 / (df3 + df4) - df5\nresult2 = pd.eval('-df1 * df2 / (df3 + df4) - df5')\n"
     "np.allclose(result1, result2)",),
    ("%%step df\ndf = pd.DataFrame(rng.random((1000, 3)), columns=['A', 'B', 'C'])\ndf.head()",),
    ("%%step assign\ndf.eval('D = (A + B) / C', inplace=True)\ndf.head()",),
    ("%%step query_at\nCmean = df['C'].mean()\nresult3 = df.query('A < @Cmean and B < @Cmean')",),
    ("%%step save\ndf.to_csv('my_df.csv')",),
    ("%%step reload\nmy_df_loaded = pd.read_csv('my_df.csv', index_col=0)\n"
     "summary = [round(float(v), 9) for v in (mask.sum(), result2.values.sum(), result3.values.sum(), my_df_loaded.values.sum())]",),
])
