"""A seeded synthetic corpus, written from scratch here: the quickstart's training data.

This module owns three kinds of generated data, deterministic per seed and quick to make:

* **stories** (``title``, ``text``, like ROCStories): 4-5 sentence stories about one of
  :data:`STORY_TOPICS`. The title names the topic ("The Lost Dog"), so a title recognisably
  determines the story, while names, places and details vary. Stories exercise the segmenter with
  titles (Mr., Mrs., Dr., Prof.), "U.S.", "St. Louis", "Mt. Hood", quoted speech and ellipses.
* **pairs** (``sentence``, ``paraphrase``, ``negative``, like ``roc/pairs_*.jsonl``): a story
  sentence, a paraphrase of it (every sentence template is written with a paraphrase template
  that shares its slots) and an out-of-domain "news" sentence as the hard negative.
* **dialogues** (``id``, ``dialogue``, ``summary``, ``topic``, like DialogSum): 3-8 turns of
  ``#Person1#: ...`` / ``#Person2#: ...`` and a 1-3 sentence summary of what was discussed.

The vocabulary is kept moderate (a small model learns it in minutes on a CPU) while slot fillers
and alternative templates keep outputs from being memorised copies. Field names match the real
data, so the same configs work on both.
"""

from __future__ import annotations

import logging
import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sld.config import save_config
from sld.data.records import write_jsonl

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Word lists

FEMALE_NAMES = tuple(
    "Anna Maria Emma Lucy Sara Kate Nina Julia Grace Rosa Mia Olivia Hannah Zoe Amy Lily".split()
)
MALE_NAMES = tuple(
    "Tom Jack Sam Ben Leo David Omar Ravi Carlos Peter Luke Noah Ethan Mark Paul Kevin".split()
)
LAST_NAMES = tuple(
    "Smith Brown Garcia Lee Patel Nguyen Miller Lopez Kim Walker Rossi Cohen Clark Baker Young Turner".split()
)
FEMALE_TITLES = ("Mrs.", "Ms.", "Dr.", "Prof.")
MALE_TITLES = ("Mr.", "Dr.", "Prof.")
CITIES = (
    "Boston",
    "Denver",
    "St. Louis",
    "Portland",
    "Austin",
    "Chicago",
    "Seattle",
    "Miami",
    "Phoenix",
    "St. Paul",
    "Atlanta",
    "Detroit",
)
COUNTRIES = ("Japan", "Italy", "France", "Mexico", "Spain", "Greece", "Peru", "Ireland")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
TIMES = (
    "One morning",
    "Last summer",
    "On Saturday",
    "Early one Sunday",
    "Last week",
    "One day",
    "Last year",
    "One evening",
    "Last spring",
)


@dataclass(frozen=True)
class Person:
    """A character: first and last name, pronouns, and the name the story calls them by."""

    first: str
    last: str
    female: bool
    title: str | None = None

    @property
    def name(self) -> str:
        return f"{self.title} {self.last}" if self.title else self.first

    def slots(self) -> dict[str, str]:
        he, his, him = ("she", "her", "her") if self.female else ("he", "his", "him")
        return {
            "name": self.name,
            "first": self.first,
            "last": self.last,
            "he": he,
            "He": he.capitalize(),
            "his": his,
            "His": his.capitalize(),
            "him": him,
        }


def random_person(rng: random.Random, titled_p: float = 0.0, exclude: Sequence[str] = ()) -> Person:
    """A random character; with probability ``titled_p`` called by title and last name ("Dr. Kim")."""
    female = rng.random() < 0.5
    names = [n for n in (FEMALE_NAMES if female else MALE_NAMES) if n not in exclude]
    first = rng.choice(names)
    last = rng.choice(LAST_NAMES)
    title = rng.choice(FEMALE_TITLES if female else MALE_TITLES) if rng.random() < titled_p else None
    return Person(first, last, female, title)


def titled_name(rng: random.Random, titles: Sequence[str] = ("Mr.", "Mrs.", "Ms.")) -> str:
    return f"{rng.choice(titles)} {rng.choice(LAST_NAMES)}"


# ---------------------------------------------------------------------------------------------
# Stories: every step of a topic offers (sentence, paraphrase) template pairs sharing their slots.

Line = tuple[str, str]


@dataclass(frozen=True)
class StoryTopic:
    """One story plot: titles that name it, five steps of alternative lines, topic slot values.

    ``optional`` steps are dropped from some stories (giving 4-sentence stories); ``adult`` topics
    may call their hero by a title ("Dr. Patel"), children's topics never do.
    """

    name: str
    titles: tuple[str, ...]
    steps: tuple[tuple[Line, ...], ...]
    slots: dict[str, tuple[str, ...]] = field(default_factory=dict)
    optional: tuple[int, ...] = (2,)
    adult: bool = True


STORY_TOPICS: tuple[StoryTopic, ...] = (
    StoryTopic(
        "lost_dog",
        ("The Lost Dog", "{name}'s Lost Dog", "Where Is {pet}?", "Missing {pet}"),
        (
            (
                ("{Time}, {name} noticed that {his} {breed} {pet} was missing from the yard.", "{Time}, {name} saw that {pet}, {his} {breed}, was gone from the yard."),
                ("{name} let {his} dog {pet} out into the yard, but the gate was open.", "{name} put {pet} outside, but nobody had closed the gate."),
            ),
            (
                ("{He} walked around the neighborhood calling {pet}'s name.", "{He} went up and down the street shouting for {pet}."),
                ("\"Have you seen my dog?\" {he} asked every neighbor on the street.", "{He} went from door to door asking the neighbors about {his} dog."),
                ("{He} put up signs with a picture of {pet} all over town.", "{He} hung posters showing {pet} around the town."),
            ),
            (
                ("{friend} helped {him} search the {place} until it got dark.", "{friend} joined the search at the {place} until night came."),
                ("{He} waited by the phone for hours... but nobody called.", "{He} sat near the phone for a long time, yet no one called."),
            ),
            (
                ("At last {he} found {pet} sleeping under a bench at the {found}.", "Finally, {pet} turned up asleep beneath a bench at the {found}."),
                ("The next morning a neighbor called to say {pet} was at the {found}.", "A neighbor phoned the following morning and said {pet} was at the {found}."),
            ),
            (
                ("{name} hugged {pet} and promised to always close the gate.", "{name} held {pet} tight and swore to keep the gate shut from now on."),
                ("\"Never run away again,\" {name} told {pet} with a smile.", "{name} smiled and asked {pet} never to run off again."),
            ),
        ),
        {
            "pet": ("Buddy", "Daisy", "Rocky", "Luna", "Charlie", "Bella", "Rex", "Coco"),
            "breed": ("beagle", "poodle", "collie", "terrier", "puppy", "old dog"),
            "place": ("park", "woods", "beach", "old barn", "field"),
            "found": ("park", "school", "fire station", "library", "bus stop"),
        },
    ),
    StoryTopic(
        "new_job",
        ("The New Job", "{name}'s First Day", "A New Job", "First Day at Work"),
        (
            (
                ("{name} got a new job at a {job} in {city}.", "{name} was hired by a {job} in {city}."),
                ("{Time}, {name} started working at a small {job}.", "{Time}, {name} began a new job at a little {job}."),
            ),
            (
                ("{He} was very nervous on {his} first day.", "{He} felt anxious when {his} first day came."),
                ("{He} woke up early and put on {his} best clothes.", "{He} got up at dawn and dressed in {his} nicest outfit."),
            ),
            (
                ("{His} boss, {boss}, showed {him} around the office.", "{boss}, {his} new boss, gave {him} a tour of the office."),
                ("{He} met {his} coworkers and learned their names.", "{He} was introduced to the people {he} would work with."),
            ),
            (
                ("By lunch {he} had already finished {his} first task.", "{He} completed {his} first assignment before lunch."),
                ("{boss} said {he} was doing a great job.", "{boss} told {him} that {his} work was excellent."),
            ),
            (
                ("{name} went home happy and proud of {him}self.", "{name} returned home feeling glad and proud."),
                ("{name} knew {he} would like working there.", "{name} was sure {he} would enjoy the job."),
            ),
        ),
        {"job": ("bakery", "bank", "bookstore", "hospital", "law firm", "coffee shop", "hotel")},
    ),
    StoryTopic(
        "birthday",
        ("The Surprise Party", "{friend}'s Birthday", "A Birthday Surprise", "The Party"),
        (
            (
                ("{friend}'s birthday was coming up on {weekday}.", "{friend} was going to have a birthday on {weekday}."),
                ("{name} wanted to throw a surprise party for {friend}.", "{name} planned a secret party for {friend}."),
            ),
            (
                ("{He} invited all of their friends to the {venue}.", "{He} asked all their friends to come to the {venue}."),
                ("{He} bought a {flavor} cake and some balloons.", "{He} picked up balloons and a {flavor} cake."),
            ),
            (
                ("Everyone hid behind the couch and turned off the lights.", "All the guests switched off the lights and hid behind the sofa."),
                ("{He} wrapped {gift} as a present.", "{He} put wrapping paper around {gift} to give as a gift."),
            ),
            (
                ("When {friend} walked in, everyone yelled, \"Surprise!\"", "Everyone shouted \"Surprise!\" as soon as {friend} came in."),
                ("{friend} came through the door and could not believe it.", "{friend} stepped inside and was completely amazed."),
            ),
            (
                ("{friend} said it was the best birthday ever.", "{friend} called it the greatest birthday of all."),
                ("They ate cake and danced until midnight.", "They had cake and danced late into the night."),
            ),
        ),
        {
            "venue": ("house", "backyard", "park", "restaurant"),
            "flavor": ("chocolate", "lemon", "carrot", "vanilla", "banana"),
            "gift": ("a watch", "a scarf", "a book", "a camera", "a new bike"),
        },
    ),
    StoryTopic(
        "baking",
        ("The Chocolate Cake", "Baking Day", "{name} Bakes a Cake", "The Cake"),
        (
            (
                ("{name} decided to bake a {flavor} cake for {his} family.", "{name} chose to make a {flavor} cake for {his} family."),
                ("{Time}, {name} wanted to bake a {flavor} cake for the first time.", "{Time}, {name} felt like making a {flavor} cake for the first time."),
            ),
            (
                ("{He} found a recipe in {his} grandmother's old cookbook.", "{He} looked up a recipe in an old cookbook from {his} grandmother."),
                ("{He} went to the store to buy flour, eggs and sugar.", "{He} drove to the store for sugar, eggs and flour."),
            ),
            (
                ("{He} mixed everything in a big bowl and put it in the oven.", "{He} stirred the ingredients together in a large bowl and baked them."),
                ("{He} forgot to set a timer and the kitchen filled with smoke.", "{He} did not set the timer, so smoke soon filled the kitchen."),
            ),
            (
                ("The cake came out a little burnt on the bottom.", "The bottom of the cake was slightly burned."),
                ("The cake rose perfectly and smelled wonderful.", "The cake puffed up nicely and had a lovely smell."),
            ),
            (
                ("{His} family loved it anyway and asked for a second piece.", "Still, {his} family enjoyed it and wanted more."),
                ("{name} decided to bake a cake every {weekday}.", "{name} made up {his} mind to bake every {weekday}."),
            ),
        ),
        {"flavor": ("chocolate", "lemon", "carrot", "vanilla", "banana", "apple")},
    ),
    StoryTopic(
        "flat_tire",
        ("The Flat Tire", "Car Trouble", "A Bad Drive", "Stuck on the Road"),
        (
            (
                ("{name} was driving to {city} when {he} heard a loud bang.", "While {name} drove toward {city}, there was a loud bang."),
                ("{Time}, {name} got a flat tire on the {road}.", "{Time}, one of {name}'s tires went flat on the {road}."),
            ),
            (
                ("{He} pulled over and saw that a tire was flat.", "{He} stopped the car and found a flat tire."),
                ("{He} looked in the trunk, but the spare tire was missing.", "{He} checked the trunk, but there was no spare tire."),
            ),
            (
                ("{His} phone battery was dead, so {he} could not call for help.", "{He} could not phone anyone because {his} battery had died."),
                ("It started to rain while {he} waited on the side of the road.", "Rain began to fall as {he} stood by the road."),
            ),
            (
                ("After an hour, {helper} stopped to help {him}.", "An hour later, {helper} pulled over to give {him} a hand."),
                ("Soon {helper} came by and helped {him} change the tire.", "Before long, {helper} arrived and helped {him} put on a new tire."),
            ),
            (
                ("{name} thanked the stranger and made it home safely.", "{name} said thank you to the stranger and got home without trouble."),
                ("From then on, {name} always kept a spare tire in the car.", "After that, {name} made sure to carry a spare tire."),
            ),
        ),
        {
            "road": ("highway", "country road", "bridge", "way to work"),
            "helper": ("a kind trucker", "a police officer", "an old farmer", "a young couple"),
        },
    ),
    StoryTopic(
        "camping",
        ("The Camping Trip", "A Night in the Woods", "Camping at {camp}", "The Tent"),
        (
            (
                ("{name} and {friend} went camping near {camp} for the weekend.", "{name} and {friend} spent the weekend camping close to {camp}."),
                ("{Time}, {name} packed a tent and drove to {camp} with {friend}.", "{Time}, {name} loaded a tent into the car and headed to {camp} with {friend}."),
            ),
            (
                ("They set up the tent and built a small fire.", "They put up their tent and made a little campfire."),
                ("They hiked for hours and saw a deer by the river.", "They walked for hours and spotted a deer near the river."),
            ),
            (
                ("At night they roasted marshmallows and told scary stories.", "After dark they toasted marshmallows and shared spooky stories."),
                ("{He} heard strange noises outside the tent... and could not sleep.", "Odd sounds outside the tent kept {him} awake."),
            ),
            (
                ("In the morning they found that a raccoon had eaten their food.", "When they woke up, a raccoon had eaten all their food."),
                ("A storm came in the morning and soaked everything.", "In the morning a storm blew in and got everything wet."),
            ),
            (
                ("They laughed about it all the way home.", "They joked about the trip during the whole drive home."),
                ("{name} said it was the best trip of the summer.", "{name} called it the greatest trip of the summer."),
            ),
        ),
        {"camp": ("Pine Lake", "Bear Lake", "Mt. Hood", "Mt. Rainier", "the Blue River", "Cedar Creek")},
    ),
    StoryTopic(
        "guitar",
        ("Learning the Guitar", "{name}'s Guitar", "The Guitar Lessons", "The New Guitar"),
        (
            (
                ("{name} always wanted to learn how to play the guitar.", "{name} had long dreamed of playing the guitar."),
                ("For {his} birthday, {name} got a used guitar from {friend}.", "{friend} gave {name} a secondhand guitar for {his} birthday."),
            ),
            (
                ("{He} signed up for lessons with {teacher}.", "{He} started taking lessons from {teacher}."),
                ("{He} watched videos online to learn the first chords.", "{He} learned the first chords by watching online videos."),
            ),
            (
                ("At first {his} fingers hurt and the songs sounded terrible.", "In the beginning {his} fingers were sore and {his} playing sounded awful."),
                ("{He} practiced for an hour every night after dinner.", "Every evening after dinner, {he} practiced for an hour."),
            ),
            (
                ("After a few months {he} could play {his} favorite song.", "A few months later, {he} was able to play {his} favorite song."),
                ("Slowly {his} playing got better and better.", "Bit by bit, {he} became a better player."),
            ),
            (
                ("{He} played a song for {his} family and they clapped.", "{His} family applauded after {he} played them a song."),
                ("Now {name} plays in a small band with {friend}.", "Today {name} and {friend} play together in a little band."),
            ),
        ),
    ),
    StoryTopic(
        "race",
        ("The Big Race", "Running the {Race}", "{name} Runs a Race", "The Finish Line"),
        (
            (
                ("{name} signed up for a {race} in {city}.", "{name} registered for a {race} in {city}."),
                ("{Time}, {name} decided to run {his} first {race}.", "{Time}, {name} made up {his} mind to run a {race} for the first time."),
            ),
            (
                ("{He} trained every morning for three months.", "For three months {he} ran every morning."),
                ("{He} bought new running shoes and made a training plan.", "{He} got new sneakers and wrote out a plan for training."),
            ),
            (
                ("A week before the race, {he} hurt {his} ankle.", "{He} injured {his} ankle one week before the race."),
                ("{friend} ran with {him} on the weekends to keep {him} going.", "On weekends {friend} ran beside {him} to keep {him} motivated."),
            ),
            (
                ("On race day {he} was tired but kept running.", "{He} was worn out on the day of the race but did not stop."),
                ("On race day {he} started slowly and saved {his} energy.", "When the race began, {he} ran slowly to save energy."),
            ),
            (
                ("{name} crossed the finish line and felt proud.", "{name} finished the race and was proud of {him}self."),
                ("{He} finished in the top ten and won a medal.", "{He} placed in the top ten and got a medal."),
            ),
        ),
        {"race": ("marathon", "half marathon", "charity race", "city race")},
    ),
    StoryTopic(
        "garden",
        ("The Garden", "Growing {Plant}", "{name}'s Garden", "The First Harvest"),
        (
            (
                ("{name} decided to plant a garden in {his} backyard.", "{name} made a plan to grow a garden behind {his} house."),
                ("{Time}, {name} bought seeds to grow {plant}.", "{Time}, {name} picked up some seeds for {plant}."),
            ),
            (
                ("{He} dug up the soil and planted rows of {plant}.", "{He} turned over the dirt and put in rows of {plant}."),
                ("{He} watered the seeds every morning before work.", "Each morning before work, {he} gave the seeds water."),
            ),
            (
                ("Rabbits kept eating the young plants at night.", "At night rabbits ate the little plants."),
                ("For weeks nothing grew... and {he} almost gave up.", "Nothing came up for weeks, so {he} nearly quit."),
            ),
            (
                ("{He} built a small fence around the garden.", "{He} put up a little fence around the plants."),
                ("By the end of summer the {plant} were ready to pick.", "When summer ended, the {plant} were ready for harvest."),
            ),
            (
                ("{He} shared the {plant} with {his} neighbors.", "{He} gave some of the {plant} to the people next door."),
                ("{name} was proud of {his} first garden.", "{name} felt proud of the first garden {he} had grown."),
            ),
        ),
        {"plant": ("tomatoes", "peppers", "carrots", "sunflowers", "beans", "strawberries", "pumpkins")},
    ),
    StoryTopic(
        "moving",
        ("Moving to {city}", "The New City", "A Fresh Start", "The Big Move"),
        (
            (
                ("{name} got a job offer in {city} and decided to move.", "{name} was offered a job in {city} and chose to move there."),
                ("{Time}, {name} moved from {oldcity} to {city}.", "{Time}, {name} left {oldcity} for a new life in {city}."),
            ),
            (
                ("{He} packed all {his} things into boxes.", "{He} put everything {he} owned into boxes."),
                ("{He} rented a truck and drove for two days.", "{He} hired a truck and spent two days on the road."),
            ),
            (
                ("The new apartment was small but close to the park.", "{His} new apartment was tiny, yet it was near the park."),
                ("{He} felt lonely at first and missed {his} old friends.", "In the beginning {he} was lonely and missed {his} friends back home."),
            ),
            (
                ("{He} joined a running club and met new people.", "{He} made new friends after joining a running club."),
                ("A neighbor named {friend} invited {him} to dinner.", "{friend}, who lived next door, asked {him} over for dinner."),
            ),
            (
                ("Soon {city} felt like home.", "Before long, {city} felt like home to {him}."),
                ("{name} was glad {he} had made the move.", "{name} was happy about the decision to move."),
            ),
        ),
    ),
    StoryTopic(
        "doctor",
        ("The Doctor Visit", "Feeling Sick", "A Visit to {doctor}", "The Cold"),
        (
            (
                ("{name} woke up with a sore throat and a fever.", "{name} got up feeling feverish with a painful throat."),
                ("{Time}, {name} felt sick and could not get out of bed.", "{Time}, {name} was too ill to get out of bed."),
            ),
            (
                ("{He} called {his} office and said {he} could not come in.", "{He} phoned work to say {he} would stay home."),
                ("{He} made an appointment with {doctor}.", "{He} booked a visit with {doctor}."),
            ),
            (
                ("{doctor} checked {his} throat and listened to {his} chest.", "{doctor} looked at {his} throat and listened to {his} lungs."),
                ("The waiting room was full, so {he} waited for an hour.", "{He} had to wait an hour because the waiting room was crowded."),
            ),
            (
                ("{doctor} said it was just a cold and told {him} to rest.", "According to {doctor}, it was only a cold, and {he} needed rest."),
                ("{doctor} gave {him} some medicine and told {him} to drink water.", "{doctor} prescribed medicine and told {him} to drink lots of water."),
            ),
            (
                ("After three days in bed, {name} felt much better.", "{name} was feeling much better after three days of rest."),
                ("By {weekday}, {he} was back at work.", "{He} returned to work by {weekday}."),
            ),
        ),
    ),
    StoryTopic(
        "snow_day",
        ("The Snow Day", "Snow!", "A Day Off From School", "The Snowman"),
        (
            (
                ("{Time}, {name} woke up and saw snow everywhere.", "{Time}, {name} got up to find snow covering everything."),
                ("It snowed all night in {city}.", "Snow fell through the whole night in {city}."),
            ),
            (
                ("The radio said that school was closed for the day.", "The news on the radio said there was no school that day."),
                ("{name}'s school was closed because of the storm.", "Because of the storm, {name}'s school did not open."),
            ),
            (
                ("{He} put on {his} boots and ran outside with {friend}.", "{He} pulled on {his} boots and hurried outside with {friend}."),
                ("{His} mother made hot chocolate for breakfast.", "For breakfast, {his} mom made hot cocoa."),
            ),
            (
                ("They built a huge snowman in the front yard.", "They made a giant snowman in the yard."),
                ("They went sledding down the big hill by the church.", "They rode sleds down the large hill near the church."),
            ),
            (
                ("{name} hoped it would snow again tomorrow.", "{name} wished for more snow the next day."),
                ("It was the best day of the whole winter.", "That was the greatest day of the winter."),
            ),
        ),
        adult=False,
    ),
    StoryTopic(
        "fishing",
        ("The Fishing Trip", "Gone Fishing", "The Big Fish", "A Day at {lake}"),
        (
            (
                ("{name} and {his} father went fishing at {lake}.", "{name} went to {lake} with {his} dad to fish."),
                ("{Time}, {name} took {his} new fishing rod to {lake}.", "{Time}, {name} brought {his} new rod to {lake}."),
            ),
            (
                ("They sat in a small boat and waited for a bite.", "They waited in a little boat for a fish to bite."),
                ("{He} got up before sunrise to find a good spot.", "{He} rose before dawn to find a good place to fish."),
            ),
            (
                ("For hours {he} did not catch anything.", "{He} caught nothing for hours."),
                ("{He} dropped {his} sandwich into the water.", "{His} sandwich fell into the lake."),
            ),
            (
                ("Suddenly something pulled hard on {his} line.", "All at once, something tugged hard on {his} line."),
                ("Just before sunset, {he} felt a strong tug.", "Right before the sun went down, {he} felt a strong pull."),
            ),
            (
                ("{He} reeled in the biggest fish {he} had ever seen.", "{He} pulled in the largest fish of {his} life."),
                ("It was only an old boot, and {he} laughed for a long time.", "It turned out to be an old boot, which made {him} laugh."),
            ),
        ),
        {"lake": ("Pine Lake", "Bear Lake", "Silver Lake", "the river", "Lake Clark")},
    ),
    StoryTopic(
        "lost_keys",
        ("The Lost Keys", "Locked Out", "Where Are My Keys?", "The Keys"),
        (
            (
                ("{name} was late for work and could not find {his} keys.", "{name} was running late and {his} keys were missing."),
                ("{Time}, {name} locked {him}self out of the house.", "{Time}, {name} got locked out of {his} own house."),
            ),
            (
                ("{He} searched the kitchen, the couch and every pocket.", "{He} looked through the kitchen, the sofa and all {his} pockets."),
                ("{He} called {friend}, who had a spare key.", "{He} phoned {friend}, who kept an extra key."),
            ),
            (
                ("{He} even checked the trash can... but they were not there.", "{He} looked in the trash too, yet the keys were not there."),
                ("{friend} was at work and could not come until noon.", "{friend} could not come before noon because of work."),
            ),
            (
                ("Finally {he} found the keys inside the fridge.", "At last the keys turned up in the refrigerator."),
                ("In the end {he} found them in the door of the car.", "Eventually {he} found them still in the car door."),
            ),
            (
                ("{name} laughed and put a hook by the door for the keys.", "{name} laughed and hung a hook near the door for {his} keys."),
                ("{He} was late, but {his} boss understood.", "{His} boss did not mind that {he} was late."),
            ),
        ),
    ),
    StoryTopic(
        "exam",
        ("The Big Test", "Studying for the Exam", "{name}'s {Subject} Test", "The Exam"),
        (
            (
                ("{name} had a big {subject} test on {weekday}.", "{name} had an important {subject} exam on {weekday}."),
                ("{Time}, {teacher} announced a {subject} test for next week.", "{Time}, {teacher} told the class about a {subject} test the next week."),
            ),
            (
                ("{name} was worried because {he} had failed the last one.", "{name} was nervous since {he} did badly last time."),
                ("{name} made flash cards and studied every night.", "{name} studied each night with flash cards."),
            ),
            (
                ("{friend} came over to study with {him} after school.", "After school, {friend} visited to study together."),
                ("The night before, {he} studied until midnight.", "{He} stayed up studying until midnight before the test."),
            ),
            (
                ("On the day of the test {he} felt calm and ready.", "{He} felt relaxed and prepared on test day."),
                ("Some questions were hard, but {he} knew most answers.", "A few questions were difficult, but {he} knew most of them."),
            ),
            (
                ("{He} got an A and {his} parents were proud.", "{His} parents were proud when {he} got an A."),
                ("{teacher} said {he} had improved a lot.", "{teacher} told {him} that {he} had gotten much better."),
            ),
        ),
        {"subject": ("math", "history", "science", "Spanish", "chemistry", "biology")},
        adult=False,
    ),
    StoryTopic(
        "travel",
        ("The Trip Abroad", "A Visit to {country}", "The Passport", "Far From Home"),
        (
            (
                ("{name} had always wanted to visit {country}.", "Visiting {country} had long been {name}'s dream."),
                ("{Time}, {name} finally booked a trip to {country}.", "{Time}, {name} at last reserved a trip to {country}."),
            ),
            (
                ("{He} saved money for a year to pay for the trip.", "{He} put money aside for a whole year for the trip."),
                ("{He} renewed {his} U.S. passport and packed {his} bags.", "{He} got a new U.S. passport and packed."),
            ),
            (
                ("On the plane {he} sat next to a friendly traveler named {friend}.", "{He} met a friendly traveler called {friend} on the plane."),
                ("{His} flight was delayed for six hours.", "The flight left six hours late."),
            ),
            (
                ("{He} lost {his} wallet on the second day and went to the U.S. embassy.", "On day two {his} wallet went missing, so {he} visited the U.S. embassy."),
                ("{He} visited museums and tried the local food.", "{He} went to museums and ate the local dishes."),
            ),
            (
                ("{name} came home with many photos and stories.", "{name} returned with lots of pictures and stories."),
                ("{name} is already planning {his} next trip.", "{name} has started planning another trip."),
            ),
        ),
    ),
)  # fmt: skip


@dataclass(frozen=True)
class SyntheticStory:
    """A generated story with the paraphrase of each of its sentences."""

    topic: str
    title: str
    sentences: tuple[str, ...]
    paraphrases: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def _story_slots(rng: random.Random, topic: StoryTopic) -> dict[str, str]:
    hero = random_person(rng, titled_p=0.35 if topic.adult else 0.0)
    friend = random_person(rng, exclude=(hero.first,))
    city, oldcity = rng.sample(CITIES, 2)
    slots = hero.slots()
    slots.update(
        friend=friend.first,
        city=city,
        oldcity=oldcity,
        country=rng.choice(COUNTRIES),
        weekday=rng.choice(WEEKDAYS),
        Time=rng.choice(TIMES),
        boss=titled_name(rng),
        teacher=titled_name(rng),
        doctor=f"Dr. {rng.choice(LAST_NAMES)}",
    )
    for key, values in topic.slots.items():
        slots[key] = rng.choice(values)
        slots[key[0].upper() + key[1:]] = string.capwords(slots[key])  # {Race} in titles: "Half Marathon"
    return slots


def generate_story(rng: random.Random, topic: StoryTopic | None = None) -> SyntheticStory:
    """One story: a topic, a title naming it and 4-5 sentences with their paraphrases."""
    topic = topic or rng.choice(STORY_TOPICS)
    slots = _story_slots(rng, topic)
    drop = rng.choice(topic.optional) if rng.random() < 0.3 else None
    sentences, paraphrases = [], []
    for index, alternatives in enumerate(topic.steps):
        if index == drop:
            continue
        text, paraphrase = rng.choice(alternatives)
        sentences.append(text.format_map(slots))
        paraphrases.append(paraphrase.format_map(slots))
    title = rng.choice(topic.titles).format_map(slots)
    return SyntheticStory(topic.name, title, tuple(sentences), tuple(paraphrases))


# ---------------------------------------------------------------------------------------------
# Out-of-domain "news" sentences: the hard negatives of the contrastive pairs.

COMPANIES = (
    "Northwind Corp.",
    "Apex Energy",
    "Bluewater Inc.",
    "Summit Motors",
    "Harbor Bank",
    "Vertex Labs",
)
EMPLOYERS = ("Northwind", "Apex Energy", "Bluewater", "Summit Motors", "Harbor Bank", "Vertex Labs")
TEAMS = ("Eagles", "Tigers", "Rangers", "Falcons", "Sharks", "Lions")
NEWS_TEMPLATES = (
    "The U.S. Senate voted {a} to {b} on {weekday} to pass the new budget bill.",
    "Shares of {company} fell {pct} percent after the firm reported lower profits.",
    "Officials in {city} said the storm left {num} homes without power.",
    "The central bank kept interest rates unchanged at {pct} percent.",
    "Police arrested {a} people after protests in downtown {city}, a spokesman said.",
    "The {team} beat the {team2} {a}-{c} in the final game of the season.",
    "The foreign minister said talks with {country} would resume next month.",
    "Unemployment rose to {pct} percent in {month}, according to government data.",
    "A spokesperson for {company} declined to comment on the report.",
    "The painting was sold at auction for {a} million dollars, the gallery said.",
    "Firefighters fought the blaze for {c} hours before bringing it under control.",
    "{company} said it would cut {num} jobs by the end of the year.",
    "Researchers in {city} published the study in a leading medical journal.",
    "Voters in {country} will elect a new president in {month}.",
    "The trial of the former mayor of {city} is expected to last {c} weeks.",
    "Oil prices climbed {pct} percent on {weekday} amid fears of supply cuts.",
    "The government of {country} announced new limits on imports of steel.",
    "Lawmakers in {city} approved a plan to widen the main highway.",
    "The airline canceled {num} flights because of the strike, officials said.",
    "Prosecutors said the former executive of {company} faces {c} charges of fraud.",
    "The earthquake had a magnitude of {c}.{d}, the geological survey reported.",
    "Exports from {country} grew for the {nth} month in a row in {month}.",
)
MONTHS = tuple(
    "January February March April May June July August September October November December".split()
)


def news_sentence(rng: random.Random) -> str:
    """An out-of-domain sentence in the style of a news wire."""
    team, team2 = rng.sample(TEAMS, 2)
    slots = {
        "a": rng.randint(2, 60),
        "b": rng.randint(2, 60),
        "c": rng.randint(2, 9),
        "d": rng.randint(0, 9),
        "pct": rng.choice(("1.5", "2", "3.2", "4", "5.7", "7", "12")),
        "num": rng.choice(("200", "1,500", "3,000", "12,000", "40,000")),
        "company": rng.choice(COMPANIES),
        "team": team,
        "team2": team2,
        "city": rng.choice(CITIES),
        "country": rng.choice(COUNTRIES),
        "weekday": rng.choice(WEEKDAYS),
        "month": rng.choice(MONTHS),
        "nth": rng.choice(("second", "third", "fourth", "fifth")),
    }
    return rng.choice(NEWS_TEMPLATES).format_map(slots)


# ---------------------------------------------------------------------------------------------
# Dialogues: each topic is a small function returning turns (speaker 1 or 2, text) and summary
# sentences; ``_finish`` checks the 3-8 turn and 1-3 sentence bounds.

Turn = tuple[int, str]
DialogueMaker = Callable[[random.Random], tuple[list[Turn], list[str]]]


def _maybe(rng: random.Random, p: float = 0.5) -> bool:
    return rng.random() < p


def _dialogue_restaurant(rng: random.Random) -> tuple[list[Turn], list[str]]:
    place = rng.choice(("Luigi's", "the Golden Dragon", "the Blue Moon Cafe", "the Olive Tree"))
    people = rng.choice(("two", "three", "four", "six"))
    day = rng.choice(WEEKDAYS)
    time, other = rng.sample(("6 p.m.", "7 p.m.", "7:30 p.m.", "8 p.m."), 2)
    caller = random_person(rng)
    turns: list[Turn] = [
        (
            1,
            rng.choice(
                (
                    f"Good evening, {place}. How can I help you?",
                    f"Hello, this is {place}. What can I do for you?",
                )
            ),
        ),
        (
            2,
            rng.choice(
                (
                    f"I'd like to book a table for {people} on {day}.",
                    f"Hi, I want to reserve a table for {people} people this {day}.",
                )
            ),
        ),
        (1, rng.choice(("What time would you like?", "Sure. For what time, please?"))),
        (2, rng.choice((f"At {time}, if possible.", f"Around {time}, please."))),
    ]
    summary = []
    if _maybe(rng):
        turns += [
            (1, f"I'm sorry, we are full at {time}. Is {other} OK?"),
            (2, rng.choice((f"Yes, {other} is fine.", f"{other.capitalize()} works for us."))),
        ]
        summary.append(
            f"#Person2# books a table for {people} at {place} at {other} on {day} because {time} is full."
        )
    else:
        summary.append(f"#Person2# books a table for {people} at {place} at {time} on {day}.")
    if _maybe(rng):
        turns += [
            (1, "May I have your name, please?"),
            (2, f"It's {caller.last}. {caller.first} {caller.last}."),
        ]
    if len(turns) <= 6 and _maybe(rng, 0.4):
        turns += [(1, "Would you like a table by the window?"), (2, "Yes, please. It's my wife's birthday.")]
        summary.append("#Person2# asks for a window table for a birthday dinner.")
    if len(turns) < 8 and _maybe(rng):
        turns.append((1, f"Thank you. We'll see you on {day}."))
    return turns, summary


def _dialogue_doctor(rng: random.Random) -> tuple[list[Turn], list[str]]:
    patient = random_person(rng, titled_p=1.0)
    doctor = f"Dr. {rng.choice(LAST_NAMES)}"
    problem = rng.choice(("a bad cough", "a headache", "a sore back", "a stomach ache", "a high fever"))
    days = rng.choice(("two", "three", "four", "five"))
    advice = rng.choice(
        (
            ("get plenty of rest", "rest"),
            ("drink more water", "drink more water"),
            ("take this medicine twice a day", "take medicine twice a day"),
        )
    )
    turns: list[Turn] = [
        (
            1,
            rng.choice(
                (
                    f"Good morning, {patient.name}. I'm {doctor}. What seems to be the problem?",
                    f"Hello, {patient.name}. What brings you here today?",
                )
            ),
        ),
        (2, f"I've had {problem} for {days} days."),
    ]
    summary = [f"{patient.name} has had {problem} for {days} days and sees {doctor}."]
    if _maybe(rng):
        turns += [(1, "Do you smoke?"), (2, rng.choice(("No, never.", "Yes, but I'm trying to quit.")))]
    if _maybe(rng):
        turns += [(1, "Let me take your temperature. It's a little high."), (2, "Is it serious, doctor?")]
    turns += [
        (1, f"I don't think so. You should {advice[0]}."),
        (2, rng.choice(("OK, thank you, doctor.", "I will. Thanks."))),
    ]
    summary.append(f"{doctor} advises {patient.name} to {advice[1]}.")
    return turns, summary


def _dialogue_interview(rng: random.Random) -> tuple[list[Turn], list[str]]:
    job = rng.choice(
        ("a sales manager", "an accountant", "a web designer", "a nurse", "a teacher", "a receptionist")
    )
    company = rng.choice(EMPLOYERS)
    years = rng.choice(("two", "three", "five", "ten"))
    turns: list[Turn] = [
        (1, f"Thank you for coming in. Why do you want to work as {job} at {company}?"),
        (
            2,
            rng.choice(
                (
                    "I like your products and I want to grow with the company.",
                    "I think my skills fit this job very well.",
                )
            ),
        ),
        (1, "How much experience do you have?"),
        (2, f"I've worked as {job} for {years} years."),
    ]
    summary = [
        f"#Person1# interviews #Person2# for a job as {job} at {company}.",
        f"#Person2# has {years} years of experience.",
    ]
    if _maybe(rng):
        salary = rng.choice(("40,000", "55,000", "70,000"))
        turns += [(1, "What salary do you expect?"), (2, f"About {salary} dollars a year.")]
        summary.append(f"#Person2# expects about {salary} dollars a year.")
    if _maybe(rng, 0.6):
        turns.append(
            (1, rng.choice(("We'll call you next week.", "Thank you. We'll let you know by Friday.")))
        )
    return turns, summary


def _dialogue_shopping(rng: random.Random) -> tuple[list[Turn], list[str]]:
    item = rng.choice(("jacket", "sweater", "pair of shoes", "dress", "shirt", "coat"))
    color, other = rng.sample(("blue", "black", "red", "green", "gray", "white"), 2)
    price = rng.choice(("30", "45", "60", "80", "120"))
    turns: list[Turn] = [
        (1, "Can I help you?"),
        (2, f"Yes, I'm looking for a {color} {item}."),
        (
            1,
            rng.choice(
                (f"How about this one? It's {price} dollars.", f"This one is on sale for {price} dollars.")
            ),
        ),
    ]
    summary = [f"#Person2# wants to buy a {color} {item} and #Person1# shows one for {price} dollars."]
    if _maybe(rng):
        turns += [(2, "Can I try it on?"), (1, "Of course. The fitting room is over there.")]
        if _maybe(rng):
            turns += [(2, "It's too small. Do you have a bigger one?"), (1, f"Sorry, only in {other}.")]
            summary.append(f"It is too small, and the bigger size only comes in {other}.")
    buys = _maybe(rng, 0.6)
    turns.append(
        (
            2,
            rng.choice(("I'll take it.", "OK, I'll buy it."))
            if buys
            else "I think I'll look around a bit more.",
        )
    )
    summary.append(f"#Person2# buys the {item}." if buys else f"#Person2# decides not to buy the {item} yet.")
    return turns, summary


def _dialogue_directions(rng: random.Random) -> tuple[list[Turn], list[str]]:
    target = rng.choice(
        ("the train station", "the post office", "the city museum", "the library", "St. Mary's Hospital")
    )
    street = rng.choice(("Main Street", "Park Avenue", "Oak Street", "River Road"))
    minutes = rng.choice(("five", "ten", "fifteen"))
    turns: list[Turn] = [
        (1, f"Excuse me, how can I get to {target}?"),
        (2, f"Go straight down {street} and turn left at the second light."),
    ]
    summary = [f"#Person1# asks the way to {target}, and #Person2# says to go down {street} and turn left."]
    if _maybe(rng):
        turns += [(1, "Is it far from here?"), (2, f"No, it's about {minutes} minutes on foot.")]
        summary.append(f"It is about {minutes} minutes on foot.")
    if _maybe(rng, 0.4):
        turns += [(1, "Can I take a bus?"), (2, "Yes, the number 12 stops right there.")]
    turns.append((1, rng.choice(("Thank you very much.", "Thanks a lot for your help."))))
    return turns, summary


def _dialogue_hotel(rng: random.Random) -> tuple[list[Turn], list[str]]:
    nights = rng.choice(("two", "three", "four", "five"))
    room = rng.choice(("single", "double", "twin"))
    price = rng.choice(("90", "120", "150", "200"))
    guest = random_person(rng, titled_p=1.0)
    turns: list[Turn] = [
        (1, "Good afternoon. Welcome to the Grand Hotel."),
        (2, f"Hello. I'd like a {room} room for {nights} nights."),
        (1, f"Certainly. It's {price} dollars a night, breakfast included."),
    ]
    summary = [
        f"{guest.name} books a {room} room at the Grand Hotel for {nights} nights at {price} dollars a night."
    ]
    if _maybe(rng):
        turns += [(2, "Does the room have free Wi-Fi?"), (1, "Yes, and there is a gym on the third floor.")]
    if _maybe(rng):
        turns += [(1, "May I have your name?"), (2, f"{guest.name}. Here is my credit card.")]
    else:
        turns += [(2, f"That's fine. The name is {guest.name}.")]
    if _maybe(rng, 0.4):
        turns.append((1, "Here is your key. Your room is on the fifth floor."))
        summary.append("#Person1# gives the guest a key to a room on the fifth floor.")
    return turns, summary


def _dialogue_weekend(rng: random.Random) -> tuple[list[Turn], list[str]]:
    plan, alt = rng.sample(
        ("go hiking", "see a movie", "go to the beach", "visit the museum", "have a picnic"), 2
    )
    day = rng.choice(("Saturday", "Sunday"))
    friend = random_person(rng)
    turns: list[Turn] = [
        (1, f"Hi {friend.first}, do you have any plans for {day}?"),
        (2, "Not really. What do you have in mind?"),
        (1, f"Let's {plan}."),
    ]
    agree = _maybe(rng, 0.6)
    if agree:
        turns.append((2, rng.choice(("Sounds great. What time?", "Good idea. When should we meet?"))))
        turns.append((1, "How about nine in the morning?"))
        summary = [f"#Person1# and {friend.first} decide to {plan} on {day} morning."]
    else:
        turns.append((2, f"The weather will be bad. Why don't we {alt} instead?"))
        turns.append((1, "OK, that's a good idea."))
        summary = [
            f"#Person1# suggests they {plan} on {day}.",
            f"Because of the bad weather, {friend.first} suggests they {alt} instead.",
        ]
    if _maybe(rng, 0.4):
        turns.append((2, rng.choice(("I'll bring some sandwiches.", "I'll ask my sister to come too."))))
    return turns, summary


def _dialogue_return(rng: random.Random) -> tuple[list[Turn], list[str]]:
    item = rng.choice(("phone", "coffee maker", "laptop", "lamp", "toaster"))
    problem = rng.choice(("it doesn't turn on", "it makes a strange noise", "the screen is broken"))
    days = rng.choice(("two", "three", "five"))
    turns: list[Turn] = [
        (1, f"Hello. I bought this {item} here {days} days ago, but {problem}."),
        (2, "I'm sorry to hear that. Do you have the receipt?"),
        (1, rng.choice(("Yes, here it is.", "Yes, it's right here."))),
    ]
    refund = _maybe(rng)
    if refund:
        turns.append((2, "Would you like a refund or a new one?"))
        turns.append((1, "A refund, please."))
        summary = [f"#Person1# returns a {item} because {problem}.", "#Person2# gives #Person1# a refund."]
    else:
        turns.append((2, "We can give you a new one right away."))
        summary = [
            f"#Person1# bought a {item} {days} days ago, but {problem}.",
            f"#Person2# exchanges it for a new {item}.",
        ]
    if len(turns) < 8 and _maybe(rng, 0.4):
        turns.append((1, "Thank you for your help."))
    return turns, summary


def _dialogue_apartment(rng: random.Random) -> tuple[list[Turn], list[str]]:
    rooms = rng.choice(("one-bedroom", "two-bedroom", "three-bedroom"))
    rent = rng.choice(("800", "950", "1,200", "1,500"))
    city = rng.choice(CITIES)
    turns: list[Turn] = [
        (1, f"Hi, I'm calling about the {rooms} apartment in {city}. Is it still available?"),
        (2, f"Yes, it is. The rent is {rent} dollars a month."),
    ]
    summary = [f"#Person1# calls about a {rooms} apartment in {city} that rents for {rent} dollars a month."]
    if _maybe(rng):
        turns += [(1, "Are pets allowed?"), (2, rng.choice(("Small pets are fine.", "Sorry, no pets.")))]
    if _maybe(rng):
        turns += [(1, "Is parking included?"), (2, "Yes, there is one parking space for each apartment.")]
    if _maybe(rng, 0.6):
        turns += [(1, "Can I see it tomorrow?"), (2, "Sure, come at ten.")]
        summary.append("#Person1# will see the apartment tomorrow at ten.")
    if len(turns) < 3:
        turns.append((1, "Thank you. I'll think about it."))
    return turns, summary


def _dialogue_homework(rng: random.Random) -> tuple[list[Turn], list[str]]:
    subject = rng.choice(("math", "history", "science", "English"))
    teacher = titled_name(rng)
    due = rng.choice(WEEKDAYS[:5])
    turns: list[Turn] = [
        (1, f"Did you finish the {subject} homework for {teacher}?"),
        (2, "Not yet. I don't understand the last question."),
        (1, "I can help you with it after class."),
    ]
    summary = [
        f"#Person2# has not finished the {subject} homework for {teacher}, and #Person1# offers to help after class."
    ]
    if _maybe(rng):
        turns += [(2, "When is it due?"), (1, f"On {due}, I think.")]
        summary.append(f"The homework is due on {due}.")
    turns.append((2, rng.choice(("Thanks, that would be great.", "Great, see you in the library."))))
    return turns, summary


DIALOGUE_TOPICS: dict[str, DialogueMaker] = {
    "book a table": _dialogue_restaurant,
    "see a doctor": _dialogue_doctor,
    "job interview": _dialogue_interview,
    "shopping": _dialogue_shopping,
    "ask for directions": _dialogue_directions,
    "hotel check-in": _dialogue_hotel,
    "weekend plans": _dialogue_weekend,
    "return an item": _dialogue_return,
    "rent an apartment": _dialogue_apartment,
    "homework": _dialogue_homework,
}


def generate_dialogue(rng: random.Random, topic: str | None = None) -> dict[str, Any]:
    """One dialogue record: ``dialogue`` (3-8 ``#PersonN#:`` turns), ``summary`` (1-3 sentences), ``topic``."""
    topic = topic or rng.choice(sorted(DIALOGUE_TOPICS))
    turns, summary = DIALOGUE_TOPICS[topic](rng)
    assert 3 <= len(turns) <= 8 and 1 <= len(summary) <= 3, (topic, turns, summary)
    dialogue = "\n".join(f"#Person{speaker}#: {text}" for speaker, text in turns)
    return {"dialogue": dialogue, "summary": " ".join(summary), "topic": topic}


# ---------------------------------------------------------------------------------------------
# The corpus on disk


def _rng(seed: int, stream: str) -> random.Random:
    # str seeds are hashed with SHA-512 by random.Random: stable across runs and PYTHONHASHSEED.
    return random.Random(f"sld-synthetic:{seed}:{stream}")


def _unique(
    make: Callable[[], Any], key: Callable[[Any], str], n: int, seen: set[str], what: str
) -> list[Any]:
    """``n`` items from ``make`` whose ``key`` is not in ``seen`` (which is updated)."""
    items: list[Any] = []
    tries = 0
    while len(items) < n:
        item = make()
        tries += 1
        if key(item) in seen:
            if tries > 50 * n + 1000:
                raise ValueError(f"could not make {n} distinct {what}; ask for fewer")
            continue
        seen.add(key(item))
        items.append(item)
    return items


def generate_stories(n: int, seed: int, split: str, seen: set[str] | None = None) -> list[SyntheticStory]:
    """``n`` distinct stories for ``split``, none of whose texts is in ``seen`` (updated in place)."""
    rng = _rng(seed, f"stories-{split}")
    return _unique(
        lambda: generate_story(rng), lambda s: s.text, n, seen if seen is not None else set(), "stories"
    )


def make_pairs(stories: Sequence[SyntheticStory], n: int, seed: int, split: str) -> list[dict[str, str]]:
    """``n`` (sentence, paraphrase, negative) records from distinct sentences of ``stories``."""
    rng = _rng(seed, f"pairs-{split}")
    candidates = {s: p for story in stories for s, p in zip(story.sentences, story.paraphrases)}
    sentences = sorted(candidates)
    if n > len(sentences):
        raise ValueError(
            f"only {len(sentences)} distinct sentences in the {split} stories; cannot make {n} pairs"
        )
    chosen = rng.sample(sentences, n)
    return [{"sentence": s, "paraphrase": candidates[s], "negative": news_sentence(rng)} for s in chosen]


def write_synthetic_corpus(
    out_dir: str | Path,
    seed: int = 0,
    stories_train: int = 4000,
    stories_valid: int = 300,
    dialogues_train: int = 3000,
    dialogues_valid: int = 300,
    pairs_train: int = 2000,
    pairs_valid: int = 300,
) -> dict[str, Path]:
    """Write the six synthetic JSONL files into ``out_dir``; return name -> path.

    Files: ``stories_{train,valid}.jsonl`` (``id``, ``title``, ``text``, ``topic``),
    ``pairs_{train,valid}.jsonl`` (``sentence``, ``paraphrase``, ``negative``; train pairs come from
    train stories, valid pairs from valid stories), ``dialogues_{train,valid}.jsonl`` (``id``,
    ``dialogue``, ``summary``, ``topic``). Valid stories and dialogues never repeat a train one.
    The same seed gives byte-identical files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    seen_stories: set[str] = set()
    seen_dialogues: set[str] = set()
    sizes = {
        "train": (stories_train, dialogues_train, pairs_train),
        "valid": (stories_valid, dialogues_valid, pairs_valid),
    }
    for split, (n_stories, n_dialogues, n_pairs) in sizes.items():
        stories = generate_stories(n_stories, seed, split, seen_stories)
        paths[f"stories_{split}"] = out / f"stories_{split}.jsonl"
        write_jsonl(
            paths[f"stories_{split}"],
            (
                {"id": f"story-{split}-{i}", "title": s.title, "text": s.text, "topic": s.topic}
                for i, s in enumerate(stories)
            ),
        )
        paths[f"pairs_{split}"] = out / f"pairs_{split}.jsonl"
        write_jsonl(paths[f"pairs_{split}"], make_pairs(stories, n_pairs, seed, split))
        rng = _rng(seed, f"dialogues-{split}")
        dialogues = _unique(
            lambda rng=rng: generate_dialogue(rng),
            lambda d: d["dialogue"],
            n_dialogues,
            seen_dialogues,
            "dialogues",
        )
        paths[f"dialogues_{split}"] = out / f"dialogues_{split}.jsonl"
        write_jsonl(
            paths[f"dialogues_{split}"],
            ({"id": f"dialogue-{split}-{i}", **d} for i, d in enumerate(dialogues)),
        )
    logger.info("wrote the synthetic corpus (seed %d) to %s", seed, out)
    return paths


@dataclass
class SyntheticCorpusConfig:
    """``sld synthetic``: how much synthetic data to write, and where."""

    output_dir: str = "data/synthetic"
    seed: int = 0
    stories_train: int = 4000
    stories_valid: int = 300
    dialogues_train: int = 3000
    dialogues_valid: int = 300
    pairs_train: int = 2000
    pairs_valid: int = 300

    def __post_init__(self) -> None:
        negative = [k for k, v in self.sizes().items() if v < 0]
        if negative:
            raise ValueError(f"sizes must not be negative: {', '.join(negative)}")

    def sizes(self) -> dict[str, int]:
        """File name -> number of records (every field but ``output_dir`` and ``seed``)."""
        return {k: v for k, v in vars(self).items() if k not in ("output_dir", "seed")}


def write_corpus(cfg: SyntheticCorpusConfig) -> dict[str, Path]:
    """``config.yaml`` and the six files of :func:`write_synthetic_corpus` into ``cfg.output_dir``;
    return file name -> path."""
    out = Path(cfg.output_dir)
    save_config(cfg, out / "config.yaml")
    return write_synthetic_corpus(out, seed=cfg.seed, **cfg.sizes())


def corpus_lines(cfg: SyntheticCorpusConfig, paths: dict[str, Path]) -> list[str]:
    """One line per written file: its name, its number of records and its path."""
    sizes = cfg.sizes()
    return [f"{name:<17} {sizes[name]:>6} records  {path}" for name, path in paths.items()]


__all__ = [
    "DIALOGUE_TOPICS",
    "STORY_TOPICS",
    "Person",
    "StoryTopic",
    "SyntheticCorpusConfig",
    "SyntheticStory",
    "corpus_lines",
    "generate_dialogue",
    "generate_stories",
    "generate_story",
    "make_pairs",
    "news_sentence",
    "write_corpus",
    "write_synthetic_corpus",
]
