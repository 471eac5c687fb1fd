#!/usr/bin/env python3
"""A deterministic orders CSV: order_id, user_id, product_id, category
(Korean names), quantity, amount numeric(12,2), status, ordered_at."""
import random, sys
n = int(sys.argv[1]); out = sys.argv[2]
rng = random.Random(42)
cats = ["식품", "정육", "과일", "생활용품", "전자기기", "패션의류", "뷰티", "도서", "스포츠레저", "선물세트"]
statuses = ["paid"] * 97 + ["cancelled", "refunded", "refunded"]
with open(out, "w", encoding="utf-8") as f:
    f.write("order_id,user_id,product_id,category,quantity,amount,status,ordered_at\n")
    for i in range(1, n + 1):
        q = rng.randint(1, 10)
        amount = q * rng.randint(1000, 300000)
        sec = rng.randint(0, 86399)
        f.write(f"{i},{rng.randint(1, 100000)},{rng.randint(1, 20000)},{rng.choice(cats)},{q},{amount}.{rng.randint(0,99):02d},"
                f"{rng.choice(statuses)},2024-01-05 {sec//3600:02d}:{sec//60%60:02d}:{sec%60:02d}\n")
