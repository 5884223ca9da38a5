"""Published figures of the BTXRD release that shape the twin's metadata and lesions."""
from __future__ import annotations

RELEASE_DIR = "BTXRD"


PLANTED_NAME = "planted_defects.json"


LOCK_FILE_NAME = "~$dataset(total).xlsx"




MIN_IMAGES = 20


# Images per (center, class), README table (Yao et al. 2025, Table 1), in release row order:
# each center's tumour rows (malignant, then benign), then the normals by center.
CELL_COUNTS = {
    (1, "Malignant"): 235, (1, "Benign"): 1110,
    (2, "Malignant"): 76, (2, "Benign"): 214,
    (3, "Malignant"): 31, (3, "Benign"): 201,
    (1, "Normal"): 1593, (2, "Normal"): 259, (3, "Normal"): 27,
}


VIEW_COUNTS = {"frontal": 2181, "lateral": 1269, "oblique": 296}


TUMOUR_COUNTS = {label: sum(n for (_, cls), n in CELL_COUNTS.items() if cls == label)
                 for label in ("Benign", "Malignant")}


RELEASE_IMAGES = 3746


JPG_IMAGES = 27         # the last ids are .jpg files (README)


DUPLICATE_PAIRS = 21    # exact-duplicate pairs found by hash audits (README)


# Proportions below are rounded aggregate shares of the published release metadata (subtype
# counts, site combinations, age deciles, sex ratio per class); they are summary statistics only.
# Subtype shares (%) within each class.
SUBTYPE_SHARES = {
    "Benign": {"osteochondroma": 49, "multiple osteochondromas": 17, "simple bone cyst": 13.5,
               "giant cell tumor": 6, "osteofibroma": 3, "synovial osteochondroma": 3.5,
               "other bt": 8},
    "Malignant": {"osteosarcoma": 87, "other mt": 13},
}


# Marked site combinations (%) of tumour rows, with the drawn scene(s) for each: (scene, bone
# carrying the lesion, weight). One table for all classes
# (normals included, whose metadata marks no site) so that anatomy carries no class signal.
SITES = [
    (("tibia",), 26, [("knee", "tibia", 3), ("ankle", "tibia", 1)]),
    (("femur",), 25, [("knee", "femur", 4), ("hip", "femur", 1)]),
    (("humerus",), 12, [("shoulder", "humerus", 3), ("elbow", "humerus", 2)]),
    (("fibula",), 6.5, [("knee", "fibula", 3), ("ankle", "fibula", 1)]),
    (("tibia", "fibula", "femur"), 5.5, [("knee", "tibia", 1), ("knee", "femur", 1)]),
    (("hand",), 5, [("hand", "ray", 1)]),
    (("foot",), 4.5, [("foot", "ray", 1)]),
    (("hip bone",), 3, [("hip", "ilium", 1)]),
    (("radius",), 2.5, [("wrist", "radius", 3), ("elbow", "radius", 1)]),
    (("ulna",), 2, [("wrist", "ulna", 2), ("elbow", "ulna", 1)]),
    (("knee-joint",), 2, [("knee", "femur", 1), ("knee", "tibia", 1)]),
    (("tibia", "fibula"), 1.5, [("knee", "tibia", 1), ("knee", "fibula", 1)]),
    (("ulna", "radius"), 1, [("wrist", "radius", 1), ("wrist", "ulna", 1)]),
    (("femur", "hip bone"), 1, [("hip", "femur", 1)]),
    (("tibia", "femur"), 0.5, [("knee", "tibia", 1), ("knee", "femur", 1)]),
    (("shoulder-joint",), 0.5, [("shoulder", "humerus", 1)]),
    (("humerus", "shoulder-joint"), 0.5, [("shoulder", "humerus", 1)]),
    (("elbow-joint",), 0.5, [("elbow", "humerus", 1), ("elbow", "radius", 1)]),
    (("ankle-joint",), 0.5, [("ankle", "tibia", 1)]),
    (("foot", "tibia", "fibula"), 0.5, [("ankle", "tibia", 1)]),
]


REGION_OF_SCENE = {"knee": "lower limb", "ankle": "lower limb", "foot": "lower limb",
                   "hip": "pelvis", "shoulder": "upper limb", "elbow": "upper limb",
                   "wrist": "upper limb", "hand": "upper limb"}


# Age deciles (0, 10, ..., 100 %) per class: tumour patients are mostly adolescents, normals adults.
AGE_DECILES = {
    "Normal": [1, 11, 19, 26, 34, 40, 46, 52, 57, 64, 88],
    "Benign": [2, 9, 12, 15, 19, 25, 36, 45, 54, 63, 88],
    "Malignant": [6, 10, 12, 14, 16, 19, 25, 40, 53, 64, 88],
}


MALE_SHARE = {"Normal": 0.54, "Benign": 0.59, "Malignant": 0.53}


VIEWS_PER_PATIENT = [0.40, 0.35, 0.15, 0.10]   # 1-4 consecutive ids per patient


LESIONS_PER_FILE = {"multiple osteochondromas": [0.4, 0.35, 0.15, 0.10],
                    "synovial osteochondroma": [0.85, 0.15], "other mt": [0.95, 0.05]}


# Box area / image area per lesion: log-normal around the medians of the real annotations
# (annotation_stats.md: benign 0.017, malignant 0.043 per box, spread p10-p90 about 40x).
# The real lower tail (p10 0.002) would be a 6 px box at the 160 px model input, so target areas
# are clipped at 0.015; drawn boxes (limited by the bone they sit on) then stay above ~0.01,
# a box side of ~10% of the image (16 px at 160 px), so every lesion stays visible.
BOX_AREA_MEDIAN = {"Benign": 0.022, "Malignant": 0.045}


BOX_AREA_SIGMA = 0.8


BOX_AREA_RANGE = (0.015, 0.25)


LESION_KIND = {
    "osteochondroma": "exostosis", "multiple osteochondromas": "exostosis",
    "simple bone cyst": "cyst", "giant cell tumor": "bubbly", "osteofibroma": "cortical",
    "synovial osteochondroma": "loose_bodies", "other bt": "cyst_or_sclerotic",
    "osteosarcoma": "osteosarcoma", "other mt": "permeative",
}


WITHIN_BONE = {"cyst", "bubbly", "cortical", "sclerotic"}


# Where along the bone each kind sits: distance from the joint end in bone radii.
JOINT_DISTANCE = {"exostosis": (1.0, 4.0), "cyst": (1.5, 5.0), "bubbly": (0.3, 1.2),
                  "cortical": (1.5, 5.0), "loose_bodies": (0.0, 0.4), "sclerotic": (1.0, 4.5),
                  "osteosarcoma": (0.8, 3.5), "permeative": (2.0, 6.0)}
